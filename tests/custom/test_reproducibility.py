"""custom.reproducibility: the deterministic switch, cuBLAS's workspace setting, and a deterministic cross-entropy."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from custom.losses import DSDLoss
from custom.reproducibility import (
    CUBLAS_WORKSPACE_CONFIG,
    VoxelwiseCrossEntropy,
    deterministic_cross_entropy,
    set_reproducibility,
)


@pytest.fixture
def restore_global_state(monkeypatch):
    """Leave PyTorch's process-wide switches and the cuBLAS variable as they were."""
    monkeypatch.delenv(CUBLAS_WORKSPACE_CONFIG, raising=False)
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]


@pytest.mark.usefixtures("restore_global_state")
@pytest.mark.parametrize("value, deterministic", [(True, True), ("true", True), (False, False), ("false", False)])
def test_switch_chooses_deterministic_or_fastest_kernels(value, deterministic):
    assert set_reproducibility(5, value) is deterministic
    first = torch.rand(3)
    assert torch.are_deterministic_algorithms_enabled() is deterministic
    assert torch.backends.cudnn.deterministic is deterministic
    assert torch.backends.cudnn.benchmark is not deterministic
    assert (CUBLAS_WORKSPACE_CONFIG in os.environ) is deterministic
    set_reproducibility(5, value)
    assert torch.equal(torch.rand(3), first)


@pytest.mark.usefixtures("restore_global_state")
def test_switch_refuses_other_values():
    with pytest.raises(ValueError, match="deterministic must be true or false, got 'maybe'"):
        set_reproducibility(0, "maybe")


@pytest.mark.usefixtures("restore_global_state")
@pytest.mark.parametrize("value", [":4096:8", ":16:8"])
def test_a_deterministic_cublas_setting_is_kept_even_after_cuda_started(monkeypatch, value):
    monkeypatch.setenv(CUBLAS_WORKSPACE_CONFIG, value)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    set_reproducibility(0, True)
    assert os.environ[CUBLAS_WORKSPACE_CONFIG] == value


@pytest.mark.usefixtures("restore_global_state")
def test_cuda_started_without_the_cublas_setting_fails_saying_how_to_start(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="Start it with CUBLAS_WORKSPACE_CONFIG=:4096:8 in its environment"):
        set_reproducibility(0, True)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.usefixtures("restore_global_state")
def test_another_cublas_setting_is_replaced_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv(CUBLAS_WORKSPACE_CONFIG, ":0:0")
    with caplog.at_level(logging.WARNING, logger="custom.reproducibility"):
        set_reproducibility(0, True)
    assert os.environ[CUBLAS_WORKSPACE_CONFIG] == ":4096:8"
    assert "CUBLAS_WORKSPACE_CONFIG=:0:0 replaced by :4096:8" in caplog.text


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_voxelwise_cross_entropy_equals_pytorch_in_value_and_gradient(reduction, label_smoothing):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 3, 6), generator=g)
    reference = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=label_smoothing)
    replacement = deterministic_cross_entropy(reference)
    assert isinstance(replacement, VoxelwiseCrossEntropy)
    expected = reference(logits, target)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    value = replacement(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "kwargs", [{"weight": torch.ones(3)}, {"reduction": "none"}, {"ignore_index": 0}], ids=["weight", "none", "ignore"]
)
def test_cross_entropy_options_without_a_voxelwise_equal_are_kept(kwargs):
    loss = torch.nn.CrossEntropyLoss(**kwargs)
    assert deterministic_cross_entropy(loss) is loss


def test_dsd_loss_main_term_uses_the_deterministic_cross_entropy():
    assert isinstance(DSDLoss().dice_ce.cross_entropy, VoxelwiseCrossEntropy)
