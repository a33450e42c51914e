"""The blockwise loss on a CUDA device: the CPU float64 reference's values and gradients, AMP no worse than the
full-resolution path, identical results when determinism is asked for, and the host syncs of a DSD training step."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import pytest
import torch

import custom.blockwise_loss as blockwise_loss
from custom.losses import DSDLoss
from custom.networks import DeferredLogits
from dsd_lab.benchmarks.step_cost import Setup, TrainingStep
from tests.helpers import deferred_heads, head_terms, leaves_of, tiny_unetr_dsd

K = 3
SPATIAL, ENCODER_SCALES, DECODER_SCALES = (16, 16, 16), [1, 2, 4, 8], [2, 4, 8, 16]
DSD_TERMS = ("deep_supervision", "kl_encoder", "kl_decoder")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda")


@pytest.fixture
def deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def _on(heads: list[DeferredLogits], device: torch.device, dtype: torch.dtype) -> list[DeferredLogits]:
    return [DeferredLogits(*(t.detach().to(device, dtype).requires_grad_() for t in head)) for head in heads]


def _heads_and_target() -> tuple[list[DeferredLogits], list[DeferredLogits], torch.Tensor]:
    target = torch.randint(0, K, (2, 1, *SPATIAL), generator=torch.Generator().manual_seed(2))
    return deferred_heads(SPATIAL, ENCODER_SCALES, K), deferred_heads(SPATIAL, DECODER_SCALES, K, seed=1), target


def _blockwise(kwargs: dict, encoders, decoders, target: torch.Tensor) -> tuple[dict, tuple]:
    total, terms = head_terms(DSDLoss(**kwargs), encoders, decoders, target, upsample=False)
    return terms, torch.autograd.grad(total, leaves_of(encoders + decoders), allow_unused=True)


@pytest.mark.parametrize("block_elements", [1 << 26, 64], ids=["one_block", "many_blocks"])
@pytest.mark.parametrize(
    "dtype, rtol, atol", [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-4, 1e-7)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("kwargs", [{}, {"detach_teacher": True, "tau": 2.0}], ids=["dsd", "detached"])
def test_blockwise_loss_equals_the_cpu_float64_reference(kwargs, dtype, rtol, atol, block_elements, device, monkeypatch):
    monkeypatch.setitem(blockwise_loss.BLOCK_ELEMENTS, device.type, block_elements)
    encoders, decoders, target = _heads_and_target()
    expected_total, expected_terms = head_terms(DSDLoss(**kwargs), encoders, decoders, target, upsample=True)
    expected_grads = torch.autograd.grad(expected_total, leaves_of(encoders + decoders), allow_unused=True)

    terms, grads = _blockwise(kwargs, _on(encoders, device, dtype), _on(decoders, device, dtype), target.to(device))
    for name in DSD_TERMS:
        torch.testing.assert_close(terms[name].cpu().double(), expected_terms[name], rtol=rtol, atol=atol, msg=name)
    for grad, expected in zip(grads, expected_grads):
        if expected is None:
            assert grad is None or not grad.any()
        else:
            torch.testing.assert_close(grad.cpu().double(), expected, rtol=rtol, atol=atol)


def test_blockwise_loss_is_identical_twice_when_determinism_is_asked_for(device, deterministic, monkeypatch):
    monkeypatch.setitem(blockwise_loss.BLOCK_ELEMENTS, device.type, 64)  # gathered heads and many blocks too
    encoders, decoders, target = _heads_and_target()
    runs = [
        _blockwise({}, _on(encoders, device, torch.float32), _on(decoders, device, torch.float32), target.to(device))
        for _ in range(2)
    ]
    (terms, grads), (terms_again, grads_again) = runs
    assert all(torch.equal(terms[name], terms_again[name]) for name in terms)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, grads_again))


def _amp_terms_and_grads(net, image, label, amp_dtype: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The DSD head terms and every head parameter's gradient of one step, under autocast as the bundles train."""
    net.zero_grad(set_to_none=True)
    loss = DSDLoss()
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(amp_dtype)
    with torch.autocast(image.device.type, dtype=dtype, enabled=dtype is not None):
        value = loss(net(image), label)
    scaler = torch.amp.GradScaler(image.device.type, enabled=amp_dtype == "float16")
    scaler.scale(value).backward()
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    grads = torch.cat([p.grad.flatten().double() / scale for p in net.heads.parameters()])
    return torch.stack([loss.latest_terms[name].double() for name in DSD_TERMS]), grads


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_deferred_heads_are_at_least_as_close_to_float32_as_full_resolution_heads_under_amp(amp_dtype, device):
    net = tiny_unetr_dsd(K, defer=True, size=32).to(device).train()
    generator = torch.Generator().manual_seed(3)
    image = torch.randn(2, 1, 32, 32, 32, generator=generator).to(device)
    label = torch.randint(0, K, (2, 1, 32, 32, 32), generator=generator).to(device)
    reference_terms, reference_grads = _amp_terms_and_grads(net, image, label, None)
    errors = {}
    for defer in (True, False):
        net.defer_upsampling = defer
        terms, grads = _amp_terms_and_grads(net, image, label, amp_dtype)
        term_error = ((terms - reference_terms).abs() / reference_terms.abs()).max()
        grad_error = (grads - reference_grads).norm() / reference_grads.norm()
        # an overflowed float16 gradient (which the GradScaler would skip) is as far as can be
        errors[defer] = tuple(float(e) if torch.isfinite(e) else math.inf for e in (term_error, grad_error))
    deferred, full_resolution = errors[True], errors[False]
    assert deferred[0] <= full_resolution[0], errors
    assert deferred[1] <= full_resolution[1], errors


@pytest.mark.parametrize("amp_dtype, expected", [(None, 0), ("bfloat16", 0), ("float16", 1)])
def test_host_syncs_of_one_dsd_training_step(amp_dtype, expected, device):
    """Heads, blockwise loss, backward and AdamW never wait for the GPU; a GradScaler's step does once.

    ``GradScaler.step`` reads whether any gradient overflowed before it lets the optimiser step.
    """
    step = TrainingStep("dsd", Setup("unetr_tiny", size=32, batch=2, classes=4, amp_dtype=amp_dtype), device)
    step.run_step()  # warm-up: allocator, cuDNN autotuning, the loss's cached voxel orders
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step.run_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchronizing CUDA operation" in str(w.message)]
    assert len(syncs) == expected, syncs
