"""Mixed precision of the bundles: the autocast dtype, and the trainer's GradScaler that a resumed run keeps."""

from __future__ import annotations

import warnings

import torch
from ignite.engine import Engine, Events

from custom.flags import as_flag

__all__ = ["AMP_DTYPES", "TrainerGradScaler", "autocast_kwargs", "uses_grad_scaler", "warn_cpu_bfloat16"]

#: The ``amp_dtype`` config values and the autocast dtype of each.
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(amp_dtype: str) -> torch.dtype:
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {amp_dtype!r}.")
    return AMP_DTYPES[amp_dtype]


def autocast_kwargs(amp_dtype: str) -> dict[str, torch.dtype]:
    """MONAI's ``amp_kwargs`` of a trainer or evaluator, the arguments of its ``torch.autocast``.

    Args:
        amp_dtype: ``"float16"`` or ``"bfloat16"``.

    Raises:
        ValueError: any other value.
    """
    return {"dtype": _dtype(amp_dtype)}


def uses_grad_scaler(amp: bool | str, amp_dtype: str) -> bool:
    """Whether mixed-precision steps scale the loss: with float16 only.

    float16 has a narrow exponent range, so small gradients underflow unless the loss is scaled up
    first; bfloat16 has float32's range and needs no scaling.

    Args:
        amp: whether mixed precision is on; also ``"true"``/``"false"`` as the command line gives them.
        amp_dtype: ``"float16"`` or ``"bfloat16"``.

    Raises:
        ValueError: a value that is none of these.
    """
    return as_flag(amp, "amp") and _dtype(amp_dtype) == torch.float16


def warn_cpu_bfloat16(amp: bool | str, amp_dtype: str, device: str | torch.device) -> bool:
    """Warn when a training is set to take bfloat16 steps on the CPU, whose convolution gradients can be wrong.

    PyTorch 2.13's oneDNN computes the bfloat16 weight gradients of some 3-D convolutions over small
    feature maps from memory it has not written (NaN or far off, differing from run to run): seen with
    2^3 maps and 3^3 kernels (UNETR's ``decoder5`` at a 16^3 ROI) and with 1^3 to 4^3 maps and 5^3
    kernels. float32 and float16 steps compute them correctly, and CUDA does not use oneDNN.

    Args:
        amp: whether mixed precision is on; also ``"true"``/``"false"`` as the command line gives them.
        amp_dtype: ``"float16"`` or ``"bfloat16"``.
        device: the training device.

    Returns:
        Whether it warned.

    Raises:
        ValueError: an ``amp`` or ``amp_dtype`` that is none of these.
    """
    if not (as_flag(amp, "amp") and _dtype(amp_dtype) == torch.bfloat16 and torch.device(device).type == "cpu"):
        return False
    warnings.warn(
        "bfloat16 training on the CPU: PyTorch's oneDNN computes the bfloat16 weight gradients of some 3-D "
        "convolutions over small feature maps wrong (e.g. 2^3 maps with 3^3 kernels); train with --amp false "
        "or --amp_dtype float16 on the CPU.",
        stacklevel=2,
    )
    return True


class TrainerGradScaler:
    """Make a MONAI trainer scale its mixed-precision steps with ``scaler``, an object of the config.

    MONAI's ``Trainer.run`` builds a new GradScaler on every run, so a resumed run would start again
    at a loss scale of 2^16 and skip steps until the scale settles. This handler puts ``scaler`` in
    its place when the run starts; the config lists the same object among the resume checkpoint's
    objects, so ``resume.pt`` saves its state and ``--resume true`` restores it. A disabled scaler
    (bfloat16) keeps MONAI's autocast path and scales nothing. Without mixed precision
    (``engine.amp`` false) the trainer is left as it is.

    Args:
        scaler: the GradScaler of the training steps.
    """

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine, "amp", False):
            engine.scaler = self.scaler
