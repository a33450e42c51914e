"""custom.amp: the autocast dtype by name, a GradScaler for float16 only, a trainer that keeps the config's scaler."""

from __future__ import annotations

import warnings

import pytest
import torch
from monai.engines import SupervisedTrainer

from custom.amp import TrainerGradScaler, autocast_kwargs, uses_grad_scaler, warn_cpu_bfloat16


@pytest.mark.parametrize("name, dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_autocast_dtype_by_name(name, dtype):
    assert autocast_kwargs(name) == {"dtype": dtype}


@pytest.mark.parametrize("name", ["float32", "fp16", "torch.bfloat16"])
def test_other_dtypes_are_refused_by_name(name):
    with pytest.raises(ValueError, match=f"amp_dtype must be one of float16, bfloat16, got '{name}'"):
        autocast_kwargs(name)


@pytest.mark.parametrize(
    "amp, amp_dtype, expected",
    [(True, "float16", True), ("true", "float16", True), (True, "bfloat16", False), ("false", "float16", False)],
)
def test_only_float16_steps_scale_the_loss(amp, amp_dtype, expected):
    assert uses_grad_scaler(amp, amp_dtype) is expected


@pytest.mark.parametrize(
    "amp, amp_dtype, device, warns",
    [
        (True, "bfloat16", "cpu", True),
        ("true", "bfloat16", torch.device("cpu"), True),
        (False, "bfloat16", "cpu", False),  # float32 steps
        (True, "float16", "cpu", False),
        (True, "bfloat16", "cuda:1", False),
    ],
)
def test_bfloat16_training_on_the_cpu_warns(amp, amp_dtype, device, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_cpu_bfloat16(amp, amp_dtype, device) is warns
    assert [str(w.message).startswith("bfloat16 training on the CPU") for w in caught] == [True] * warns


def _trainer(amp: bool, scaler: torch.amp.GradScaler, iterations: int = 3) -> SupervisedTrainer:
    """A tiny MONAI trainer on the CPU with the scaler attached, run for ``iterations`` steps."""
    network = torch.nn.Linear(3, 2)
    batches = [{"image": torch.randn(4, 3), "label": torch.randn(4, 2)} for _ in range(iterations)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        loss_function=torch.nn.MSELoss(),
        train_handlers=[TrainerGradScaler(scaler)],
        amp=amp,
    )
    with warnings.catch_warnings():  # MONAI autocasts for "cuda", which a CPU build turns off with a warning
        warnings.simplefilter("ignore", UserWarning)
        trainer.run()
    return trainer


def test_amp_trainer_scales_with_the_configured_scaler_across_runs():
    scaler = torch.amp.GradScaler("cpu", growth_interval=1)  # the scale doubles after every finite step
    trainer = _trainer(amp=True, scaler=scaler)
    assert trainer.scaler is scaler
    assert scaler.get_scale() == 2.0 ** (16 + 3)
    _trainer(amp=True, scaler=scaler)  # a new run, as after a resume: the scale goes on
    assert scaler.get_scale() == 2.0 ** (16 + 6)


def test_trainer_without_amp_keeps_no_scaler():
    scaler = torch.amp.GradScaler("cpu", growth_interval=1)
    assert _trainer(amp=False, scaler=scaler).scaler is None
    assert scaler.state_dict()["scale"] == 2.0**16
