"""Bytes moved, floating-point operations and operators of a training step, and the time ratios they predict.

Every operator that PyTorch dispatches during one training step is seen by :class:`TrafficCounter`
(a :class:`~torch.utils._python_dispatch.TorchDispatchMode`), which adds up what it reads and writes
(views are free; a gather reads what it writes), its FLOPs (PyTorch's own formulas for convolutions
and matmuls) and one for the operator itself. The blockwise loss's fused CPU kernels, which the dispatcher does not
see, count as one operator each that reads and writes its tensors once. The cost of DSD is then DSD's step minus
Basic's.

Two predictions are made from these counts:

- **this host**: DSD's extra bytes at the memory bandwidth of a stream-like copy, against the Basic
  step time measured in the same run: ``1 + extra_bytes / bandwidth / basic_step``; and with its extra
  operators at the latency of a small operator measured in the same run too (see
  :func:`dsd_lab.benchmarks.host.operator_latency`), which on a host shared with other processes is
  what a many-operator loss pays most;
- **a GPU**: each operator as a roofline, ``max(flops / peak, bytes / bandwidth, launch)``, summed over
  the Basic and the DSD step counted with bf16 autocast and the GPU's block size. A backbone made only
  of large convolutions would take ``flops / peak``; the per-operator roofline also charges its
  memory-bound operators (norms, activations, thin 3D convolutions) to the bandwidth, and every
  operator at least one kernel launch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

import custom.blockwise_loss as blockwise_loss
import custom.native as native

__all__ = ["GPUS", "Gpu", "Traffic", "TrafficCounter", "gpu_step_seconds", "host_ratio"]

aten = torch.ops.aten

#: operators that read only the elements they write (plus their index), not their whole source
_GATHERS = {aten.index_select, aten.gather, aten.index, aten.embedding}
#: operators that write a source into chosen places of their target: they move the source's worth, not the target's
_SCATTERS = {aten.index_copy_, aten.index_copy, aten.index_put_, aten.index_put, aten.scatter_, aten.scatter}
#: in-place operators that overwrite their target without reading it
_OVERWRITES = {aten.fill_, aten.zero_, aten.copy_, aten.normal_, aten.uniform_, aten.bernoulli_, aten.random_}
#: operators that allocate or describe memory without touching it
_FREE = {
    aten.empty,
    aten.empty_like,
    aten.empty_strided,
    aten.detach,
    aten.lift_fresh,
    aten._local_scalar_dense,
    aten._unsafe_view,
    aten.resize_,
}


def _addmm_inplace_flop(self: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    return 2 * mat1.shape[0] * mat1.shape[1] * mat2.shape[1]


_EXTRA_FLOPS = {aten.addmm_: _addmm_inplace_flop}


@dataclass(frozen=True)
class Gpu:
    """What bounds a GPU's kernels: memory bandwidth, dense bf16 tensor-core throughput, launch overhead."""

    name: str
    bandwidth: float  # bytes/s
    bf16_flops: float  # FLOP/s, dense
    launch_s: float = 5e-6  # an eager PyTorch operator's launch, CPU side


#: Data-sheet figures (SXM parts): HBM3 3.35 TB/s and HBM3e 4.8 TB/s, both 989 dense bf16 TFLOP/s.
GPUS = (Gpu("H100 SXM", 3.35e12, 989e12), Gpu("H200 SXM", 4.8e12, 989e12))


@dataclass
class Traffic:
    """``(flops, bytes)`` of every operator of a step, in order."""

    operators: list[tuple[int, int]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.operators)

    @property
    def flops(self) -> int:
        return sum(f for f, _ in self.operators)

    def summary(self) -> dict[str, int]:
        """Total bytes, FLOPs and operators."""
        return {"bytes": self.bytes, "flops": self.flops, "operators": len(self.operators)}


def _distinct_bytes(tensor: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor (or a broadcast view of one) covers."""
    distinct = math.prod(size for size, stride in zip(tensor.shape, tensor.stride()) if stride != 0)
    return distinct * tensor.element_size()


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


class TrafficCounter(TorchDispatchMode):
    """Counts the bytes read and written, the FLOPs and the operators run under it, in :attr:`traffic`."""

    def __init__(self) -> None:
        super().__init__()
        self.traffic = Traffic()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if func.is_view or packet in _FREE:
            return out
        written = _tensors(out)
        write_bytes = sum(_distinct_bytes(t) for t in written)
        if packet in _SCATTERS:
            moved = _tensors((args[1:], kwargs))  # index and source
            read_bytes = sum(_distinct_bytes(t) for t in moved)
            write_bytes = _distinct_bytes(moved[-1])
        elif packet in _GATHERS:
            index_bytes = sum(_distinct_bytes(t) for t in _tensors((args, kwargs))[1:])
            read_bytes = write_bytes + index_bytes
        else:
            read_bytes = 0
            values = dict(zip((a.name for a in func._schema.arguments), args)) | kwargs
            for argument in func._schema.arguments:
                is_target = argument.alias_info is not None and argument.alias_info.is_write
                if is_target and (argument.kwarg_only or packet in _OVERWRITES):
                    continue  # an out= tensor, or an in-place target that is only written
                read_bytes += sum(_distinct_bytes(t) for t in _tensors(values.get(argument.name)))
        formula = flop_registry.get(packet) or _EXTRA_FLOPS.get(packet)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula else 0
        self.traffic.operators.append((flops, read_bytes + write_bytes))
        return out


@contextmanager
def blockwise_loss_as_on(device_type: str) -> Iterator[None]:
    """Let the blockwise loss on this machine run as it does on ``device_type``: its blocks cut and its kernel
    gradients split as there, and off the CPU without the fused CPU kernels, which a GPU never runs."""
    settings = (blockwise_loss.BLOCK_ELEMENTS, blockwise_loss.PRODUCT_RUN_VOXELS)
    saved = [setting["cpu"] for setting in settings], os.environ.get(native.SWITCH)
    for setting in settings:
        setting["cpu"] = setting[device_type]
    if device_type != "cpu":
        os.environ[native.SWITCH] = "0"
    try:
        yield
    finally:
        for setting, value in zip(settings, saved[0]):
            setting["cpu"] = value
        if saved[1] is None:
            os.environ.pop(native.SWITCH, None)
        else:
            os.environ[native.SWITCH] = saved[1]


@contextmanager
def _native_kernels_counted(traffic: Traffic) -> Iterator[None]:
    """Count each call of the fused CPU kernels, which PyTorch's dispatcher does not see, as one operator that reads
    and writes its tensors once: the forward kernel reads the logits and labels and writes the distillation
    gradients, the Dice gradient kernel overwrites the logits it reads."""
    forward, dice_gradient = native.NativeKernels.block_forward, native.NativeKernels.dice_gradient

    def counted_forward(self: native.NativeKernels, logits: torch.Tensor, labels: torch.Tensor, *args: Any) -> None:
        kl_grad = args[4]
        written = 0 if kl_grad is None else _distinct_bytes(kl_grad)
        traffic.operators.append((0, _distinct_bytes(logits) + _distinct_bytes(labels) + written))
        forward(self, logits, labels, *args)

    def counted_dice_gradient(
        self: native.NativeKernels, logits: torch.Tensor, labels: torch.Tensor, *args: Any
    ) -> None:
        traffic.operators.append((0, 2 * _distinct_bytes(logits) + _distinct_bytes(labels)))
        dice_gradient(self, logits, labels, *args)

    native.NativeKernels.block_forward, native.NativeKernels.dice_gradient = counted_forward, counted_dice_gradient
    try:
        yield
    finally:
        native.NativeKernels.block_forward, native.NativeKernels.dice_gradient = forward, dice_gradient


def count_step(step: Callable[[], Any]) -> Traffic:
    """The traffic of the second call of ``step``, a training step: the first makes the optimiser's state."""
    step()
    with TrafficCounter() as counter, _native_kernels_counted(counter.traffic):
        step()
    return counter.traffic


def host_ratio(basic: Traffic, dsd: Traffic, bandwidth: float, basic_step_s: float, latency_s: float = 0.0) -> float:
    """DSD's step time over Basic's if DSD's extra bytes moved at ``bandwidth`` and each extra operator
    cost ``latency_s`` more, nothing else changing."""
    extra_s = (dsd.bytes - basic.bytes) / bandwidth + (len(dsd.operators) - len(basic.operators)) * latency_s
    return 1.0 + extra_s / basic_step_s


def gpu_step_seconds(traffic: Traffic, gpu: Gpu) -> float:
    """A step's time as the sum of its operators' rooflines on ``gpu``."""
    return sum(max(f / gpu.bf16_flops, b / gpu.bandwidth, gpu.launch_s) for f, b in traffic.operators)
