"""Deep-supervision and distillation terms of DSD computed block by block from deferred head logits.

The straightforward eq. 4 upsamples every head to a full-resolution logit tensor, and autograd then
keeps that tensor and several softmax tensors of the same size per head for the backward pass.
Here each head's logits are produced one block of voxels at a time from its
:class:`~custom.networks.DeferredLogits`, every term is computed on the block while it sits in
cache, and the gradients are derived in closed form:

- KL(t -> s) * tau^2 / V gives the student ``tau / V * (q_s - q_t)`` and the teacher
  ``tau / V * q_t * (n log q_t - sum_i log q_i - kl)``, with ``q = softmax(x / tau)`` and ``kl`` the
  voxel's summed divergence. Both are known in the forward pass and go straight back to the
  head's low-resolution input and upsampling kernel.
- DiceCE's gradient depends on per-class sums over the whole volume, so the backward pass makes the
  decoder heads' blocks and softmax once more and finishes it:
  ``p * (a - <a, p>) + lambda_ce / V * (p - onehot)`` with ``a_k = A_k onehot_k + C_k``.

Heads of different scales produce their blocks in one shared voxel order (finest kernel position
first, see :func:`_digits_first`), in which upsampling a block is a single matmul, with no reshuffling
of voxels; the bias rides along as an input channel of ones. A head read whole by every block is put
in that order once; a head read in slices (the full-resolution one, whose 1x1x1 convolution is done
here too) is gathered block by block from its own order and its gradient written straight back there.
When that head has fewer classes than feature channels, its convolution runs once over the whole map
and its logits are gathered instead, fewer bytes than its features. The kernel gradients, sums over
many voxels into a few numbers, are taken as batched partial products (:func:`_add_products`).

The blocks of all heads are stacked, so that each softmax and each elementwise step is one operator
for every head, and they live in a few scratch tensors of the block's size, reused by every block of a
pass: the loop allocates nothing that grows with the volume. Per-class sums come from a matmul with
the block's one-hot labels, so no step waits for the device (no ``bincount``, ``.item()`` or
``torch.equal``) and none adds up with atomics (no ``index_add_``): the terms and gradients are the same
bits on every run. Between the passes only the gradients with respect to each head's low-resolution
input are kept; the backward pass makes the supervised heads' blocks once more rather than keeping
their softmax.

On the CPU, in float32 and float64, the softmaxes, sums and logit gradients of a block are made by the fused
kernels of :mod:`custom.native` in one pass over the block's logits, and a gathered head's input and gradient are
copied by its column kernels, which read and write each channel in address order; the matmuls that make the logits
and carry their gradients to the heads stay PyTorch's. Elsewhere, or where the kernels cannot be built, the same
formulas run as PyTorch operators.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, reduce
from typing import Any

import torch

from custom.native import NativeKernels, native_kernels, sorted_columns
from custom.networks import DeferredLogits, upsampling_steps

__all__ = ["DiceCESettings", "KLGroup", "blockwise_head_terms"]

#: Most logits per block over the stacked heads (heads x classes x voxels), which sets the size of the scratch tensors.
#: On a 2-core CPU at 96^3 with 8 heads of 8 classes, 8 blocks of 110,592 voxels per item took 1.56 s of CPU time per
#: step and 64 blocks 2.04 s, one block 2.05 s: smaller blocks fit the caches better but dispatch more operators. At
#: 128^3 with 4 classes the block loop took 0.91 s a step with 8 blocks of 262,144 voxels and 1.21 s with 64 blocks of
#: 32,768, the same number of logits per block deciding as at 96^3. On a GPU one block per item would launch the
#: fewest kernels, but its scratch tensors would add 0.42 GB at 96^3 (bf16 autocast: DSD 1.26x Basic's memory
#: instead of 1.11x).
BLOCK_ELEMENTS = {"cpu": 64 * 150_000, "cuda": 64 << 18}


@dataclass(frozen=True)
class DiceCESettings:
    """The :class:`monai.losses.DiceCELoss` options the blockwise computation reproduces."""

    include_background: bool = True
    batch: bool = False
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> DiceCESettings | None:
        """Settings for ``DiceCELoss(**kwargs)``, or ``None`` when it uses an option not reproduced here.

        Reproduced: softmax activation with one-hot labels, plain (not squared, not Jaccard) Dice averaged
        over batch and classes, and unweighted cross-entropy without label smoothing.
        """
        required = {"to_onehot_y": True, "softmax": True, "sigmoid": False, "other_act": None, "squared_pred": False}
        required.update({"jaccard": False, "reduction": "mean", "weight": None, "label_smoothing": 0.0})
        for key, value in kwargs.items():
            if key in required:
                expected = required[key]
                if value is not expected and (expected is None or isinstance(value, torch.Tensor) or value != expected):
                    return None
            elif key not in cls.__dataclass_fields__:
                return None
        return cls(**{key: value for key, value in kwargs.items() if key not in required})


@dataclass(frozen=True)
class KLGroup:
    """One teacher and its students, indices into the list of heads."""

    teacher: int
    students: tuple[int, ...]


def blockwise_head_terms(
    heads: Sequence[DeferredLogits | torch.Tensor],
    target: torch.Tensor,
    supervised: Sequence[int],
    groups: Sequence[KLGroup],
    tau: float,
    detach_teacher: bool,
    dice_ce: DiceCESettings,
) -> tuple[torch.Tensor, ...] | None:
    """Deep supervision and one KL sum per group, from the heads' deferred logits.

    Args:
        heads: every head's logits; a full-resolution tensor counts as a head of scale 1.
        target: ``(B, 1, *spatial)`` class-index labels.
        supervised: indices of the heads whose DiceCE is summed into the deep-supervision term.
        groups: distillation groups; each gives ``sum_s KL(teacher -> s) * tau^2``, averaged over voxels.
        tau: distillation temperature.
        detach_teacher: no gradient reaches a teacher from its group.
        dice_ce: the DiceCE options.

    Returns:
        ``(deep_supervision, kl_group_0, kl_group_1, ...)`` as differentiable scalars, or ``None`` when
        the heads' scales share no voxel order (e.g. anisotropic factors that are not products of
        one another's steps); the terms must then be computed at full resolution.

    Raises:
        ValueError: a head's upsampled size is not the label's, the label does not have one channel,
            or a head belongs to more than one distillation group.
    """
    plain = tuple(not isinstance(head, DeferredLogits) for head in heads)
    deferred = [head if isinstance(head, DeferredLogits) else _scale_one(head) for head in heads]
    if target.shape[1] != 1:
        raise ValueError(f"DSD loss: labels must have one channel of class indices, got shape {tuple(target.shape)}.")
    for index, head in enumerate(deferred):
        size = tuple(n * s for n, s in zip(head.low_res.shape[2:], head.scale))
        if head.low_res.shape[0] != target.shape[0] or size != tuple(target.shape[2:]):
            raise ValueError(
                f"DSD loss: head {index} upsamples to batch {head.low_res.shape[0]} and size {size}, "
                f"but the labels are {tuple(target.shape)}."
            )
    plan = _Plan(tuple(supervised), tuple(groups), float(tau), detach_teacher, dice_ce, plain)
    if len(plan.grouped) != len(set(plan.grouped)):
        raise ValueError(f"DSD loss: a head may belong to one distillation group only, got {list(groups)}.")
    try:
        block_elements = BLOCK_ELEMENTS.get(target.device.type, BLOCK_ELEMENTS["cuda"])
        block_voxels = max(1, block_elements // (max(1, len(plan.stack)) * deferred[0].weight.shape[1]))
        layout = _Layout(tuple(target.shape[2:]), [head.scale for head in deferred], block_voxels)
    except LookupError:
        return None
    flat = [tensor for head in deferred for tensor in head]
    return _BlockwiseHeadLoss.apply(plan, layout, target, *flat)


def _scale_one(logits: torch.Tensor) -> DeferredLogits:
    classes, dims = logits.shape[1], logits.dim() - 2
    eye = torch.eye(classes, dtype=logits.dtype, device=logits.device).view(classes, classes, *[1] * dims)
    return DeferredLogits(logits, eye, logits.new_zeros(classes, *[1] * dims))


@dataclass(frozen=True)
class _Plan:
    supervised: tuple[int, ...]
    groups: tuple[KLGroup, ...]
    tau: float
    detach_teacher: bool
    dice_ce: DiceCESettings
    plain: tuple[bool, ...]  # heads given as full-resolution logits: no kernel to apply

    @property
    def grouped(self) -> list[int]:
        """Each distillation group's teacher, then its students, group after group."""
        return [i for group in self.groups for i in (group.teacher, *group.students)]

    @property
    def stack(self) -> list[int]:
        """The order of the heads' stacked blocks: the grouped heads, then the other supervised ones."""
        grouped = self.grouped
        return grouped + [i for i in self.supervised if i not in grouped]


def _digit_shape(levels: Sequence[Sequence[int]], coarse: Sequence[int]) -> tuple[list[int], list[int]]:
    """Digits of each axis (coarse, then the levels from coarsest to finest) and the order putting level 0 first."""
    dims, n = len(coarse), len(levels)
    shape = [size for a in range(dims) for size in (coarse[a], *(levels[k][a] for k in reversed(range(n))))]
    order = [a * (n + 1) + (n - k) for k in range(n) for a in range(dims)] + [a * (n + 1) for a in range(dims)]
    return shape, order


def _digits_first(x: torch.Tensor, levels: Sequence[Sequence[int]], coarse: Sequence[int]) -> torch.Tensor:
    """``(P, Q, *spatial)`` to ``(P, Q, voxels)`` with the voxels ordered by their level-0 digits first.

    Along each axis, ``spatial = coarse * prod(levels)`` and a coordinate's digits are, from least to
    most significant, those of ``levels[0]``, ``levels[1]``, ..., then the coarse index. A head of scale
    ``prod(levels[:n])`` then produces each sub-position of its kernel as one contiguous run of voxels,
    so that its upsampling is a plain matmul into this order.
    """
    shape, order = _digit_shape(levels, coarse)
    return x.reshape(*x.shape[:2], *shape).permute(0, 1, *(2 + o for o in order)).reshape(*x.shape[:2], -1)


def _digits_last(x: torch.Tensor, levels: Sequence[Sequence[int]], coarse: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`_digits_first`."""
    shape, order = _digit_shape(levels, coarse)
    inverse = sorted(range(len(order)), key=order.__getitem__)
    spatial = [c * math.prod(level[a] for level in levels) for a, c in enumerate(coarse)]
    x = x.reshape(*x.shape[:2], *(shape[o] for o in order))
    return x.permute(0, 1, *(2 + i for i in inverse)).reshape(*x.shape[:2], *spatial)


@lru_cache(maxsize=16)
def _digit_index(
    levels: tuple[tuple[int, ...], ...], coarse: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, inverse)``: the flat index of each voxel of :func:`_digits_first`'s order, and its inverse.

    Reordering with ``index_select`` and these indices reads and writes each voxel once, where the
    permuted copy of :func:`_digits_first` walks a many-dimensional stride pattern; both are cached
    because every training step asks for the same few.
    """
    spatial = [c * math.prod(level[a] for level in levels) for a, c in enumerate(coarse)]
    with torch.inference_mode(False), torch.no_grad():
        natural = torch.arange(math.prod(spatial), device=device)
        order = _digits_first(natural.view(1, 1, *spatial), levels, coarse).reshape(-1)
        return order, torch.empty_like(order).scatter_(0, order, natural)


@lru_cache(maxsize=64)
def _sorted_block(
    levels: tuple[tuple[int, ...], ...], coarse: tuple[int, ...], device: torch.device, start: int, stop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~custom.native.sorted_columns` of the voxels ``start:stop`` of :func:`_digit_index`'s order."""
    with torch.inference_mode(False), torch.no_grad():
        return sorted_columns(_digit_index(levels, coarse, device)[0][start:stop])


def _reorder(x: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, C, voxels)`` with the voxels taken in the order of ``index``, or ``out`` (any shape) holding them."""
    # a 2-d index_select takes a fast path that the 3-d one along its last dimension does not
    rows = x.reshape(-1, x.shape[-1])
    if out is None:
        return rows.index_select(1, index).view(*x.shape[:2], -1)
    torch.index_select(rows, 1, index, out=out.view(rows.shape[0], -1))
    return out


#: Fewest voxels per partial product of a kernel gradient, by device type; ``None``: one product (see _add_products).
PRODUCT_RUN_VOXELS: dict[str, int | None] = {"cpu": 4096, "cuda": None}


def _add_products(out: torch.Tensor, grad: torch.Tensor, inputs: torch.Tensor, alpha: float) -> None:
    """``out += alpha * grad @ inputs.T``, a sum over many voxels into a small ``(rows, channels)`` matrix.

    A CPU's BLAS runs such a product, short and wide with a long inner dimension, on one core at a fraction of its
    speed, so there a long one is split into runs of voxels whose partial products are one batched matmul, then added
    in order. A GPU's BLAS splits the inner dimension itself, and each operator more is one launch more.
    """
    shortest, runs = PRODUCT_RUN_VOXELS.get(grad.device.type), 1
    while shortest and grad.shape[1] % (2 * runs) == 0 and grad.shape[1] // (2 * runs) >= shortest:
        runs *= 2
    if runs == 1:
        out.addmm_(grad, inputs.t(), alpha=alpha)
        return
    partial = torch.bmm(
        grad.view(grad.shape[0], runs, -1).transpose(0, 1), inputs.view(inputs.shape[0], runs, -1).permute(1, 2, 0)
    )
    out.add_(partial.sum(0), alpha=alpha)


class _Layout:
    """The voxel order shared by every head and the label, and its split into blocks.

    Raises:
        LookupError: the heads' scales are not all products of the finest steps of one digit system.
    """

    def __init__(self, spatial: Sequence[int], scales: Sequence[Sequence[int]], block_voxels: int) -> None:
        steps = [list(reversed(upsampling_steps(scale))) for scale in scales]
        self.levels = tuple(max(steps, key=len))
        if any(s != list(self.levels[: len(s)]) for s in steps):
            raise LookupError(f"head scales {list(scales)} share no digit order")
        self.coarse = tuple(n // math.prod(level[a] for level in self.levels) for a, n in enumerate(spatial))
        self.voxels = math.prod(spatial)
        self.blocks = 1  # per batch item; a block is a run of whole level-0.. sub-positions
        for level in self.levels:
            if self.voxels // self.blocks <= block_voxels:
                break
            self.blocks *= math.prod(level)
        self.block_voxels = self.voxels // self.blocks

    def block(self, index: int) -> slice:
        """The voxels of one block of a batch item, in the layout's order."""
        return slice(index * self.block_voxels, (index + 1) * self.block_voxels)


class _Scratch:
    """Tensors of one block's width, made on first use and reused by every head and block of a pass."""

    def __init__(self, columns: int, dtype: torch.dtype, device: torch.device) -> None:
        self.columns, self.dtype, self.device = columns, dtype, device
        self._tensors: dict[tuple[str, int], torch.Tensor] = {}

    def __call__(self, name: str, *rows: int, ones_row: bool = False) -> torch.Tensor:
        """The ``(*rows, columns)`` tensor called ``name``; with ``ones_row``, a last row of ones is added."""
        shape = (*rows[:-1], rows[-1] + ones_row, self.columns)
        tensor = self._tensors.get((name, shape))
        if tensor is None:
            tensor = torch.empty(shape, dtype=self.dtype, device=self.device)
            if ones_row:
                tensor[..., -1, :].fill_(1)
            self._tensors[name, shape] = tensor
        return tensor


class _Head:
    """One head's tensors in the layout's voxel order, and how a block of its logits is made.

    The bias rides along as one more input channel of ones, so that a block's logits are one matmul
    and the gradients of kernel and bias together are another.
    """

    def __init__(
        self,
        index: int,
        tensors: Sequence[torch.Tensor],
        plain: bool,
        kernel_grad: bool,
        layout: _Layout,
        dtype: torch.dtype,
        native: NativeKernels | None,
    ) -> None:
        low_res, weight, bias = tensors
        self.index, self.plain, self.kernel_grad, self.layout, self.dtype = index, plain, kernel_grad, layout, dtype
        self.native = native
        self.shape = low_res.shape
        self.in_channels, self.classes, self.scale = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
        sub_positions = math.prod(self.scale)
        own = len(upsampling_steps(self.scale))
        self.kernel_levels, self.low_levels = layout.levels[:own], layout.levels[own:]
        self.order, self.inverse = _digit_index(self.low_levels, layout.coarse, low_res.device)
        # A block is ``count`` whole sub-positions of the kernel, or a slice of the low-res voxels of one.
        self.count = max(1, sub_positions // layout.blocks)
        self.per_sub_position = max(1, layout.blocks // sub_positions)
        flat = low_res.reshape(*low_res.shape[:2], -1)
        # A head read whole by every block is put in the layout's order once; one read in slices (the
        # full-resolution head) is gathered block by block, which never copies the whole tensor.
        self.gathered = self.per_sub_position > 1
        self.features: torch.Tensor | None = None
        narrowing = sub_positions == 1 and not plain and self.classes < self.in_channels  # a 1x1x1 convolution
        if self.gathered and narrowing and flat.dtype == dtype:
            flat = self._convolve(flat, weight, bias)
        if self.gathered:
            self.low = flat
        else:
            ordered = _reorder(flat, self.order).to(dtype)
            self.low = ordered if plain else torch.cat([ordered, ordered.new_ones(ordered.shape[0], 1, ordered.shape[2])], 1)
        self._gathered_block: tuple[tuple[int, int], torch.Tensor] | None = None
        if not self.plain:
            ones = [1] * len(self.scale)
            kernel = _digits_first(weight.to(dtype), self.kernel_levels, ones).permute(1, 2, 0)  # (K_out, S, K_in)
            bias = _digits_first(bias.to(dtype)[None], self.kernel_levels, ones)[0]  # (K_out, S)
            rows = torch.cat([kernel, bias[..., None]], dim=2)  # (K_out, S, K_in + 1)
            self.rows = rows.view(self.classes, -1, self.count, self.in_channels + 1).transpose(0, 1)
            self.rows = self.rows.reshape(-1, self.classes * self.count, self.in_channels + 1)  # (slots, rows, K_in + 1)

    def _convolve(self, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The ``(B, K, voxels)`` logits of a head of scale 1, made whole from its ``(B, C, voxels)`` features.

        With fewer classes than channels, gathering the logits block by block moves fewer bytes than gathering the
        features, and the 1x1x1 convolution and its gradients run once over the whole map; the head is plain from here.
        """
        self.features, self.kernel = features, weight.reshape(self.in_channels, self.classes).to(self.dtype)
        logits = features.new_empty(features.shape[0], self.classes, features.shape[2])
        bias = bias.reshape(-1, 1).to(self.dtype)
        for b in range(features.shape[0]):
            torch.addmm(bias, self.kernel.t(), features[b], out=logits[b])
        self.features_shape, self.shape = self.shape, torch.Size((self.shape[0], self.classes, *self.shape[2:]))
        self.in_channels, self.plain = self.classes, True
        return logits

    def grads(self) -> _Grads:
        """Accumulators of the gradients of the low-res input and of the kernel rows."""
        device = self.order.device
        rows = torch.zeros_like(self.rows) if self.kernel_grad and not self.plain else None
        if self.gathered:  # written slice by slice in the head's own order; returned as it is unless _convolve made it
            shaped = torch.empty(self.shape, dtype=self.dtype, device=device)
            return _Grads(shaped.view(*self.shape[:2], -1), rows, shaped)
        return _Grads(torch.zeros(*self.shape[:2], self.order.numel(), dtype=self.dtype, device=device), rows)

    def _select(self, block: int) -> tuple[int, slice]:
        """The slot of kernel sub-positions and the low-res voxels that make one block."""
        return block // self.per_sub_position, self.layout.block(block % self.per_sub_position)

    def _gather(self, b: int, voxels: slice, out: torch.Tensor) -> None:
        """Copy the block ``voxels`` of item ``b``'s low-res input, read in its own order, to ``out`` in its dtype."""
        source = self.low[b]
        if source.dtype != out.dtype:  # half precision under autocast: the block is computed in float32
            out.copy_(source.index_select(1, self.order[voxels]))
        elif self.native is None:
            torch.index_select(source, 1, self.order[voxels], out=out)
        else:
            self.native.gather_columns(source, out, self._columns(voxels))

    def _columns(self, voxels: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return _sorted_block(self.low_levels, self.layout.coarse, self.order.device, voxels.start, voxels.stop)

    def _low_block(self, b: int, voxels: slice, scratch: _Scratch) -> torch.Tensor:
        """``(K_in + 1, n)`` low-res input of a block with its row of ones, gathered for a head read in slices."""
        if not self.gathered:
            return self.low[b][:, voxels]
        key = (b, voxels.start)
        if self._gathered_block is None or self._gathered_block[0] != key:
            out = scratch(f"input of head {self.index}", self.in_channels, ones_row=True)
            self._gather(b, voxels, out[:-1])
            self._gathered_block = (key, out)
        return self._gathered_block[1]

    def logits(self, b: int, block: int, out: torch.Tensor, scratch: _Scratch) -> None:
        """Write the ``(K, voxels)`` logits of a block to ``out``."""
        slot, voxels = self._select(block)
        if self.plain:
            if self.gathered:
                self._gather(b, voxels, out)
            else:
                out.copy_(self.low[b][:, voxels])
            return
        # rows (class, sub-position) times low-res voxels is the block's voxel order
        torch.mm(self.rows[slot], self._low_block(b, voxels, scratch), out=out.view(self.rows.shape[1], -1))

    def backward_block(
        self, b: int, block: int, grad: torch.Tensor, grads: _Grads, scratch: _Scratch, alpha: float = 1.0
    ) -> None:
        """Add ``alpha`` times a block's ``(K, voxels)`` logit gradient to the accumulators of :meth:`grads`."""
        slot, voxels = self._select(block)
        if not self.plain:
            grad = grad.view(self.rows.shape[1], -1)
            if grads.rows is not None:
                _add_products(grads.rows[slot], grad, self._low_block(b, voxels, scratch), alpha)
        if not self.gathered:
            if self.plain:
                grads.low[b][:, voxels].add_(grad, alpha=alpha)
            else:
                grads.low[b][:, voxels].addmm_(self.rows[slot, :, :-1].t(), grad, alpha=alpha)
            return
        # a gathered head's block goes straight to its own order: no zeroed accumulator, no reordering after
        out = scratch(f"input gradient of head {self.index}", self.in_channels)
        if self.plain:
            torch.mul(grad, alpha, out=out)
        else:
            torch.addmm(out, self.rows[slot, :, :-1].t(), grad, beta=0, alpha=alpha, out=out)
        key = (b, voxels.start)
        if self.native is not None:
            self.native.scatter_columns(grads.low[b], out, self._columns(voxels), add=key in grads.written)
        else:
            index = self.order[voxels]
            if key in grads.written:
                out.add_(grads.low[b].index_select(1, index))
            grads.low[b].index_copy_(1, index, out)
        grads.written.add(key)

    def input_grads(self, grads: _Grads, dtypes: Sequence[torch.dtype]) -> list[torch.Tensor | None]:
        """Gradients of ``(low_res, weight, bias)`` in their own layouts and dtypes."""
        if self.features is not None:
            return self._convolution_grads(grads.low, dtypes)
        # Returned in a tensor of its own, no view: autograd then adds the backbone's gradient of the same features
        # into it in place, where it would make a new tensor of their size for a view.
        if grads.shaped is None:
            shaped = torch.empty(self.shape, dtype=self.dtype, device=self.order.device)
            grads.shaped = _reorder(grads.low, self.inverse, shaped)
        grad_low = grads.shaped.to(dtypes[0])
        if grads.rows is None:
            return [grad_low, None, None]
        ones = [1] * len(self.scale)
        grad_rows = grads.rows.view(-1, self.classes, self.count, self.in_channels + 1).transpose(0, 1)
        grad_rows = grad_rows.reshape(self.classes, -1, self.in_channels + 1)  # (K_out, S, K_in + 1)
        grad_weight = _digits_last(grad_rows[..., :-1].permute(2, 0, 1), self.kernel_levels, ones).to(dtypes[1])
        grad_bias = _digits_last(grad_rows[None, ..., -1], self.kernel_levels, ones)[0].to(dtypes[2])
        return [grad_low, grad_weight, grad_bias]

    def _convolution_grads(self, grad_logits: torch.Tensor, dtypes: Sequence[torch.dtype]) -> list[torch.Tensor | None]:
        """Gradients of ``(features, weight, bias)`` of a head made by :meth:`_convolve`, from its logits' gradient."""
        grad_features = torch.empty(self.features_shape, dtype=self.dtype, device=grad_logits.device)
        flat = grad_features.view(*self.features_shape[:2], -1)
        for b in range(flat.shape[0]):
            torch.mm(self.kernel, grad_logits[b], out=flat[b])
        if not self.kernel_grad:
            return [grad_features.to(dtypes[0]), None, None]
        grad_kernel = grad_logits.new_zeros(self.classes, self.features_shape[1])
        for b in range(flat.shape[0]):
            _add_products(grad_kernel, grad_logits[b], self.features[b], 1.0)
        grad_weight = grad_kernel.t().reshape(self.features_shape[1], self.classes, *self.scale)
        grad_bias = grad_logits.sum((0, 2)).view(self.classes, *self.scale)
        return [grad_features.to(dtypes[0]), grad_weight.to(dtypes[1]), grad_bias.to(dtypes[2])]


@dataclass
class _Grads:
    """A head's gradient accumulators: low-res input (the layout's order, or its own for a gathered head), kernel rows."""

    low: torch.Tensor
    rows: torch.Tensor | None
    shaped: torch.Tensor | None = None  # the input's gradient in its own shape, where ``low`` is a view of it
    written: set[tuple[int, int]] = field(default_factory=set)  # a gathered head's slices written so far

    def scale_(self, weight: torch.Tensor) -> _Grads:
        """Multiply every accumulator by ``weight`` in place."""
        self.low.mul_(weight)
        if self.rows is not None:
            self.rows.mul_(weight)
        return self


class _BlockwiseHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, plan: _Plan, layout: _Layout, target: torch.Tensor, *flat: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        with torch.autocast(target.device.type, enabled=False):
            return _forward(ctx, plan, layout, target, flat)

    @staticmethod
    def backward(ctx: Any, *grad_terms: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with torch.autocast(ctx.device_type, enabled=False):
            return (None, None, None, *_backward(ctx, grad_terms))


def _onehot(label: torch.Tensor, class_index: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """``(K, n)``: the block's one-hot labels, from ``class_index`` ``(K, 1)``."""
    return torch.eq(label[None], class_index, out=scratch("one-hot labels", class_index.shape[0]))


def _runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs ``(start, stop)`` of consecutive positions, in order."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def _forward(
    ctx: Any, plan: _Plan, layout: _Layout, target: torch.Tensor, flat: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    dtype = reduce(torch.promote_types, [t.dtype for t in flat[::3]], torch.float32)  # half precision in float32
    kernel_grads = [ctx.needs_input_grad[4 + i] or ctx.needs_input_grad[5 + i] for i in range(0, len(flat), 3)]
    batch, classes, device = target.shape[0], flat[1].shape[1], target.device
    blocks, n = layout.blocks, layout.block_voxels
    order, _ = _digit_index(layout.levels, layout.coarse, device)
    labels = _reorder(target.reshape(batch, 1, -1), order).view(batch, -1).long()  # (B, voxels) in the heads' order
    native = _native(dtype, device, labels, classes)
    heads = [
        _Head(n, flat[3 * n : 3 * n + 3], plan.plain[n], kernel_grad, layout, dtype, native)
        for n, kernel_grad in enumerate(kernel_grads)
    ]
    scratch = _Scratch(n, dtype, device)
    class_index = torch.arange(classes, device=device)[:, None]

    grouped, stack = plan.grouped, plan.stack
    supervised = sorted(stack.index(i) for i in plan.supervised)  # stack positions of the supervised heads
    # per block: sum of log p at the label, sum of p, sum of p at the label per label class, label counts
    log_p_label = torch.zeros(batch, blocks, len(supervised), dtype=dtype, device=device)
    p_sums = torch.zeros(batch, blocks, len(supervised), classes, dtype=dtype, device=device)
    intersections = torch.zeros(batch, blocks, len(supervised), classes, dtype=dtype, device=device)
    label_counts = torch.zeros(batch, blocks, classes, dtype=dtype, device=device)
    kl_sums = torch.zeros(len(plan.groups), batch, blocks, dtype=dtype, device=device)
    # gradients of each group's KL per unit weight and per tau / V, known as soon as a block is done
    kl_grads = {i: heads[i].grads() for i in _kl_gradient_groups(plan)}
    group_sizes = [1 + len(group.students) for group in plan.groups]

    for b in range(batch):
        for block in range(blocks):
            logits = scratch("logits", len(stack), classes)
            for p, i in enumerate(stack):
                heads[i].logits(b, block, logits[p], scratch)
            if native is not None:
                kl_block = scratch("distillation gradients", len(grouped), classes) if grouped else None
                outputs = (log_p_label[b, block], p_sums[b, block], intersections[b, block], label_counts[b, block])
                native.block_forward(
                    logits, labels[b, layout.block(block)], supervised, group_sizes, plan.tau,
                    not plan.detach_teacher, kl_block, (*outputs, kl_sums[:, b, block]),
                )  # fmt: skip
                start = 0
                for group, size in zip(plan.groups, group_sizes):
                    teacher_grad = None if plan.detach_teacher else kl_block[start]
                    student_grads = kl_block[start + 1 : start + size]
                    _send_kl_gradients(heads, group, b, block, student_grads, teacher_grad, kl_grads, scratch)
                    start += size
                continue
            if supervised:
                label = labels[b, layout.block(block)]
                onehot = _onehot(label, class_index, scratch)
                torch.sum(onehot, 1, out=label_counts[b, block])
                rank = 0
                for start, stop in _runs(supervised):
                    count = stop - start
                    ranks = slice(rank, rank + count)
                    log_p = torch.log_softmax(logits[start:stop], 1, out=scratch("log q", len(stack), classes)[:count])
                    at_label = torch.gather(log_p, 1, label.expand(count, 1, -1), out=scratch("at label", count, 1))
                    torch.sum(at_label, (1, 2), out=log_p_label[b, block, ranks])
                    torch.sum(log_p.exp_(), 2, out=p_sums[b, block, ranks])
                    torch.mm(at_label.view(count, -1).exp_(), onehot.t(), out=intersections[b, block, ranks])
                    rank += count
            if not grouped:
                continue
            softened = logits[: len(grouped)]
            if plan.tau != 1.0:
                softened.mul_(1 / plan.tau)
            log_q = torch.log_softmax(softened, 1, out=scratch("log q", len(stack), classes)[: len(grouped)])
            start = 0
            for g, group in enumerate(plan.groups):
                students = len(group.students)
                log_q_teacher, log_q_students = log_q[start], log_q[start + 1 : start + 1 + students]
                q_teacher = torch.exp(log_q_teacher, out=scratch("q teacher", classes))
                # sum_s log q_s - n log q_t, the divergence with its sign turned
                divergence = torch.sum(log_q_students, 0, out=scratch("divergence", classes))
                divergence.sub_(log_q_teacher, alpha=students)
                student_grads = log_q_students.exp_().sub_(q_teacher)  # q_s - q_t
                per_class = divergence.mul_(q_teacher)  # -q_t * (n log q_t - sum_s log q_s)
                kl_voxel = torch.sum(per_class, 0, keepdim=True, out=scratch("kl", 1))  # minus the voxel's KL sum
                torch.sum(kl_voxel, (0, 1), out=kl_sums[g, b, block])
                # q_t * (n log q_t - sum_s log q_s - kl), with its sign turned
                teacher_grad = None if plan.detach_teacher else per_class.addcmul_(q_teacher, kl_voxel, value=-1)
                _send_kl_gradients(heads, group, b, block, student_grads, teacher_grad, kl_grads, scratch)
                start += 1 + students

    settings = plan.dice_ce
    cross_entropy = -log_p_label.double().sum((0, 1))  # (heads,)
    intersection, predicted = (s.double().sum(1).transpose(0, 1) for s in (intersections, p_sums))  # (heads, B, K)
    ground = label_counts.double().sum(1)[None]  # (1, B, K)
    if settings.batch:
        intersection, predicted, ground = (s.sum(1, keepdim=True) for s in (intersection, predicted, ground))
    denominator = predicted + ground + settings.smooth_dr
    dice = 1.0 - (2.0 * intersection + settings.smooth_nr) / denominator
    first = 0 if settings.include_background else 1
    deep_supervision = (
        settings.lambda_dice * dice[..., first:].mean((1, 2)) + settings.lambda_ce * cross_entropy / (batch * layout.voxels)
    ).sum()
    kl_terms = -kl_sums.double().sum((1, 2)) * plan.tau**2 / (batch * layout.voxels)

    supervised_heads = [stack[p] for p in supervised]
    for i, head in enumerate(heads):
        head._gathered_block = None
        if i not in supervised_heads:
            head.low = None  # only the Dice gradient's blocks read it again
    ctx.plan, ctx.layout, ctx.device_type = plan, layout, device.type
    ctx.heads, ctx.supervised_heads, ctx.labels, ctx.kl_grads = heads, supervised_heads, labels, kl_grads
    ctx.dice_stats = (intersection, denominator, first)
    ctx.dtypes = [t.dtype for t in flat]
    return (deep_supervision.to(dtype), *(k.to(dtype) for k in kl_terms))


def _native(dtype: torch.dtype, device: torch.device, labels: torch.Tensor, classes: int) -> NativeKernels | None:
    """The fused block kernels where they can run, after checking that they will index within the classes.

    Raises:
        ValueError: a label is not a class index in ``[0, classes)``.
    """
    native = native_kernels(dtype, device)
    if native is not None and labels.numel():
        low, high = torch.aminmax(labels)
        if low < 0 or high >= classes:
            raise ValueError(f"DSD loss: labels must be class indices in [0, {classes}), got {int(low)} to {int(high)}.")
    return native


def _send_kl_gradients(
    heads: Sequence[_Head],
    group: KLGroup,
    b: int,
    block: int,
    student_grads: torch.Tensor,
    teacher_grad: torch.Tensor | None,
    kl_grads: Mapping[int, _Grads],
    scratch: _Scratch,
) -> None:
    """Pass one block's distillation gradients of a group to its heads; the teacher's comes with its sign turned."""
    for j, i in enumerate(group.students):
        heads[i].backward_block(b, block, student_grads[j], kl_grads[i], scratch)
    if teacher_grad is not None:
        heads[group.teacher].backward_block(b, block, teacher_grad, kl_grads[group.teacher], scratch, -1.0)


def _kl_gradient_groups(plan: _Plan) -> dict[int, int]:
    """Each head that receives a distillation gradient, with the index of its group."""
    return {
        i: g
        for g, group in enumerate(plan.groups)
        for i in (group.students if plan.detach_teacher else (group.teacher, *group.students))
    }


def _backward(ctx: Any, grad_terms: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    if ctx.kl_grads is None:
        raise RuntimeError(
            "DSD loss: backward through the blockwise head terms a second time; their buffers are freed by the first."
        )
    plan: _Plan = ctx.plan
    heads: list[_Head] = ctx.heads
    layout: _Layout = ctx.layout
    kl_grads = ctx.kl_grads
    ctx.kl_grads = None  # each buffer goes as soon as it has been used
    grad_ds, grad_kl = grad_terms[0], grad_terms[1:]
    grads: list[_Grads | None] = [None] * len(heads)
    labels = ctx.labels
    batch, classes, dtype, device = labels.shape[0], heads[0].classes, heads[0].dtype, labels.device
    voxels = batch * layout.voxels
    for i, g in _kl_gradient_groups(plan).items():
        weight = grad_kl[g] * (plan.tau / voxels)
        grads[i] = kl_grads.pop(i).scale_(weight)

    supervised = ctx.supervised_heads
    if supervised:
        settings = plan.dice_ce
        intersection, denominator, first = ctx.dice_stats
        # d(mean Dice)/d(p_k) = A_k * onehot_k + C_k for each head, batch item and class
        count = denominator.shape[1] * (classes - first)
        scale = grad_ds.double() * settings.lambda_dice / count
        coefficient_a = -2.0 * scale / denominator
        coefficient_c = (2.0 * intersection + settings.smooth_nr) * scale / denominator**2
        coefficient_a[..., :first] = 0.0
        coefficient_c[..., :first] = 0.0
        coefficient_a = coefficient_a.to(dtype).expand(-1, batch, -1)  # (heads, B, K)
        coefficient_c = coefficient_c.to(dtype).expand(-1, batch, -1)
        ce_scale = grad_ds.to(dtype) * settings.lambda_ce / voxels
        off_label = (coefficient_c + ce_scale)[..., None]  # (heads, B, K, 1)
        scratch = _Scratch(layout.block_voxels, dtype, device)
        class_index = torch.arange(classes, device=device)[:, None]
        heads_count = len(supervised)
        for i in supervised:
            if grads[i] is None:
                grads[i] = heads[i].grads()
        native = native_kernels(dtype, device)
        for b in range(batch):
            a_b, c_b = coefficient_a[:, b].contiguous(), coefficient_c[:, b, None].contiguous()
            for block in range(layout.blocks):
                logits = scratch("logits", heads_count, classes)
                for r, i in enumerate(supervised):
                    heads[i].logits(b, block, logits[r], scratch)
                label = labels[b, layout.block(block)]
                if native is not None:
                    native.dice_gradient(logits, label, a_b, c_b, float(ce_scale))
                    for r, i in enumerate(supervised):
                        heads[i].backward_block(b, block, logits[r], grads[i], scratch)
                    continue
                p = torch.softmax(logits, 1, out=scratch("p", heads_count, classes))
                # p * (a + c_ce - <a, p>) - c_ce * onehot, with a = A * onehot + C
                p_label = torch.gather(p, 1, label.expand(heads_count, 1, -1), out=scratch("at label", heads_count, 1))
                label_a_p = torch.index_select(a_b, 1, label, out=scratch("a at label", heads_count))
                label_a_p.mul_(p_label.view(heads_count, -1))
                inner = torch.bmm(c_b, p, out=scratch("<a, p>", heads_count, 1)).add_(label_a_p[:, None])
                grad = torch.sub(off_label[:, b], inner, out=scratch("grad", heads_count, classes)).mul_(p)
                grad.addcmul_(_onehot(label, class_index, scratch), label_a_p.sub_(ce_scale)[:, None])
                for r, i in enumerate(supervised):
                    heads[i].backward_block(b, block, grad[r], grads[i], scratch)

    result: list[torch.Tensor | None] = []
    for i, head in enumerate(heads):
        dtypes = ctx.dtypes[3 * i : 3 * i + 3]
        result += [None, None, None] if grads[i] is None else head.input_grads(grads[i], dtypes)
    return result
