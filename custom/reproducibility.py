"""Seeds, and the choice between deterministic and fastest kernels: the bundles' ``deterministic`` switch."""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import set_determinism

from custom.flags import as_flag

__all__ = [
    "CUBLAS_WORKSPACE_CONFIG",
    "VoxelwiseCrossEntropy",
    "deterministic_cross_entropy",
    "set_reproducibility",
    "use_deterministic_cublas",
]

logger = logging.getLogger(__name__)

#: The environment variable that sizes cuBLAS's workspaces, and the values with which cuBLAS is deterministic.
CUBLAS_WORKSPACE_CONFIG = "CUBLAS_WORKSPACE_CONFIG"
_DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")


def set_reproducibility(seed: int, deterministic: bool | str = False) -> bool:
    """Seed every random generator, and choose deterministic kernels or the fastest ones.

    Python's, NumPy's, PyTorch's and MONAI's generators are seeded (MONAI's ``set_determinism``).
    With ``deterministic`` true, PyTorch runs deterministic algorithms only and raises on an
    operation that has none (``torch.use_deterministic_algorithms``), cuDNN does not benchmark, and
    cuBLAS gets a deterministic workspace (:func:`use_deterministic_cublas`): two runs with the same
    seed on the same machine and software give the same weights. With ``deterministic`` false,
    cuDNN benchmarks and picks the fastest convolution algorithms, which may differ from run to run
    and may be non-deterministic: the seed then fixes the data order, augmentation and initial
    weights, not every bit of the result on a GPU.

    Call it before anything uses CUDA: in the bundles it is the first item of ``initialize``.

    Args:
        seed: the seed.
        deterministic: the switch; also ``"true"``/``"false"`` as the command line gives them.

    Returns:
        Whether deterministic kernels were chosen.

    Raises:
        ValueError: ``deterministic`` is neither true nor false.
        RuntimeError: see :func:`use_deterministic_cublas`.
    """
    deterministic = as_flag(deterministic, "deterministic")
    if deterministic:
        use_deterministic_cublas()
    set_determinism(seed=seed, use_deterministic_algorithms=deterministic)
    # set_determinism switches cuDNN to deterministic for any seed; the switch decides instead
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    return deterministic


def use_deterministic_cublas() -> None:
    """Give cuBLAS a deterministic workspace configuration, :data:`CUBLAS_WORKSPACE_CONFIG` ``=:4096:8``.

    PyTorch reads the variable once, when the process first calls cuBLAS; to be safe it is set only
    while CUDA has not started in the process. A deterministic value already set (``:4096:8`` or
    ``:16:8``) is kept, another one is replaced with a warning.

    Raises:
        RuntimeError: CUDA has already started in this process without a deterministic value.
    """
    value, wanted = os.environ.get(CUBLAS_WORKSPACE_CONFIG), _DETERMINISTIC_CUBLAS[0]
    if value in _DETERMINISTIC_CUBLAS:
        return
    if torch.cuda.is_initialized():
        raise RuntimeError(
            f"deterministic true needs {CUBLAS_WORKSPACE_CONFIG}={wanted} before CUDA starts, but this process "
            f"has already used CUDA with {CUBLAS_WORKSPACE_CONFIG}={value or '(unset)'}. Start it with "
            f"{CUBLAS_WORKSPACE_CONFIG}={wanted} in its environment."
        )
    if value is not None:
        logger.warning(f"{CUBLAS_WORKSPACE_CONFIG}={value} replaced by {wanted}: deterministic is true.")
    os.environ[CUBLAS_WORKSPACE_CONFIG] = wanted


class VoxelwiseCrossEntropy(nn.Module):
    """Cross-entropy computed per voxel and then averaged (or summed), deterministic on CUDA as well.

    PyTorch's mean- or sum-reduced cross-entropy of images (``nll_loss2d``) adds voxels up with
    atomic operations on CUDA: the result varies in its last bits from run to run, and under
    ``torch.use_deterministic_algorithms(True)`` it raises. Its per-voxel form has no such sum;
    reducing that is deterministic. The value is that of ``nn.CrossEntropyLoss`` without class weights.

    Args:
        reduction: ``"mean"`` or ``"sum"``.
        label_smoothing: as ``nn.CrossEntropyLoss``.

    Raises:
        ValueError: another reduction.
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: logits ``(B, K, *spatial)``; target class indices ``(B, *spatial)`` or probabilities like logits."""
        per_voxel = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        return per_voxel.mean() if self.reduction == "mean" else per_voxel.sum()


def deterministic_cross_entropy(loss: nn.CrossEntropyLoss) -> nn.Module:
    """A deterministic module of the same value as ``loss``: :class:`VoxelwiseCrossEntropy` where one exists.

    Class weights, an ``ignore_index`` and ``reduction="none"`` keep ``loss`` itself (the last is deterministic
    already). Targets are class indices from 0 or class probabilities.

    Args:
        loss: e.g. the ``cross_entropy`` of MONAI's ``DiceCELoss``.
    """
    if loss.weight is not None or loss.reduction not in ("mean", "sum") or loss.ignore_index != -100:
        return loss
    return VoxelwiseCrossEntropy(loss.reduction, loss.label_smoothing)
