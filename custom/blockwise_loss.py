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
- DiceCE's gradient depends on per-class sums over the whole volume, so the forward pass stores
  the decoder heads' softmax and the backward pass finishes it:
  ``p * (a - <a, p>) + lambda_ce / V * (p - onehot)`` with ``a_k = A_k onehot_k + C_k``.

Heads of different scales produce their blocks in one shared voxel order (finest kernel position
first, see :func:`_digits_first`), in which upsampling a block is a single matmul, with no reshuffling
of voxels. Between the passes, only the deep-supervised heads' softmax and the gradients with respect
to each head's low-resolution logits are kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from custom.networks import DeferredLogits, upsampling_steps

__all__ = ["DiceCESettings", "KLGroup", "blockwise_head_terms"]

#: Voxels per block, measured at 96^3 on a 2-core CPU: smaller blocks fit the caches better but spend
#: more time dispatching operators. On a GPU larger blocks keep the kernels busy.
BLOCK_VOXELS = {"cpu": 150_000, "cuda": 1 << 21}


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
        ValueError: a head's upsampled size is not the label's, or the label does not have one channel.
    """
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
    try:
        block_voxels = BLOCK_VOXELS.get(target.device.type, BLOCK_VOXELS["cuda"])
        layout = _Layout(tuple(target.shape[2:]), [head.scale for head in deferred], block_voxels)
    except LookupError:
        return None
    plan = _Plan(tuple(supervised), tuple(groups), float(tau), detach_teacher, dice_ce)
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


class _Layout:
    """The voxel order shared by every head and the label, and its split into blocks.

    Raises:
        LookupError: the heads' scales are not all products of the finest steps of one digit system.
    """

    def __init__(self, spatial: Sequence[int], scales: Sequence[Sequence[int]], block_voxels: int) -> None:
        steps = [list(reversed(upsampling_steps(scale))) for scale in scales]
        self.levels = max(steps, key=len)
        if any(s != self.levels[: len(s)] for s in steps):
            raise LookupError(f"head scales {list(scales)} share no digit order")
        self.coarse = [n // math.prod(level[a] for level in self.levels) for a, n in enumerate(spatial)]
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


class _Head:
    """One head's tensors in the layout's voxel order, and how a block of its logits is made."""

    def __init__(
        self, low_res: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel_grad: bool, layout: _Layout
    ) -> None:
        self.dtype = torch.promote_types(low_res.dtype, torch.float32)  # half precision is computed in float32
        self.classes, self.scale = weight.shape[0], tuple(weight.shape[2:])
        self.sub_positions = math.prod(self.scale)
        self.layout, self.kernel_grad = layout, kernel_grad
        own = len(upsampling_steps(self.scale))
        self.kernel_levels, self.low_levels = layout.levels[:own], layout.levels[own:]
        ones = [1] * len(self.scale)
        self.low: torch.Tensor | None = _digits_first(low_res.to(self.dtype), self.low_levels, layout.coarse)
        kernel = _digits_first(weight.to(self.dtype), self.kernel_levels, ones)  # (K_in, K_out, S)
        self.kernel = kernel.permute(1, 2, 0).contiguous()  # (K_out, S, K_in)
        self.bias = _digits_first(bias.to(self.dtype)[None], self.kernel_levels, ones)[0]  # (K_out, S)
        eye = torch.eye(self.classes, dtype=self.dtype, device=kernel.device)
        # a head without upsampling: its logits are ``low_res`` itself
        self.plain = not kernel_grad and self.sub_positions == 1 and torch.equal(kernel[..., 0], eye) and not bias.any()

    def zero_grads(self) -> list[torch.Tensor]:
        """Zeroed accumulators of the gradients of the low-res logits, kernel and bias, in this layout."""
        return [torch.zeros_like(self.low), torch.zeros_like(self.kernel), torch.zeros_like(self.bias)]

    def _select(self, block: int) -> tuple[slice, slice]:
        """The kernel sub-positions and low-res voxels that make one block."""
        blocks = self.layout.blocks
        if self.sub_positions >= blocks:
            count = self.sub_positions // blocks
            return slice(block * count, (block + 1) * count), slice(None)
        per_sub_position = blocks // self.sub_positions
        sub = block // per_sub_position
        return slice(sub, sub + 1), self.layout.block(block % per_sub_position)

    def logits(self, b: int, block: int, temperature: float = 1.0) -> torch.Tensor:
        """``(K, voxels)`` logits of a block divided by ``temperature``."""
        subs, voxels = self._select(block)
        low = self.low[b][:, voxels]
        if self.plain:
            return low / temperature if temperature != 1.0 else low
        kernel = self.kernel[:, subs].reshape(-1, self.classes)
        bias = self.bias[:, subs].reshape(-1, 1)
        # rows (class, sub-position) times low-res voxels is the block's voxel order; the temperature is free here
        return torch.addmm(bias, kernel, low, beta=1 / temperature, alpha=1 / temperature).view(self.classes, -1)

    def backward_block(
        self,
        b: int,
        block: int,
        grad: torch.Tensor,
        grad_low: torch.Tensor,
        grad_kernel: torch.Tensor,
        grad_bias: torch.Tensor,
    ) -> None:
        """Add a block's ``(K, voxels)`` logit gradient to the accumulators of the low-res logits and kernel."""
        subs, voxels = self._select(block)
        low_grad = grad_low[b][:, voxels]
        if self.plain:
            low_grad.add_(grad)
            return
        count = subs.stop - subs.start
        grad = grad.view(self.classes * count, -1)
        low_grad.addmm_(self.kernel[:, subs].reshape(-1, self.classes).t(), grad)
        if self.kernel_grad:
            grad_kernel[:, subs].add_(torch.mm(grad, self.low[b][:, voxels].t()).view(self.classes, count, -1))
            grad_bias[:, subs].add_(grad.sum(1).view(self.classes, count))

    def input_grads(self, grads: Sequence[torch.Tensor], dtypes: Sequence[torch.dtype]) -> list[torch.Tensor | None]:
        """Gradients of ``(low_res, weight, bias)`` in their own layouts and dtypes."""
        ones = [1] * len(self.scale)
        grad_low = _digits_last(grads[0], self.low_levels, self.layout.coarse).to(dtypes[0])
        if not self.kernel_grad:
            return [grad_low, None, None]
        grad_weight = _digits_last(grads[1].permute(2, 0, 1), self.kernel_levels, ones).to(dtypes[1])
        grad_bias = _digits_last(grads[2][None], self.kernel_levels, ones)[0].to(dtypes[2])
        return [grad_low, grad_weight, grad_bias]


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


def _forward(
    ctx: Any, plan: _Plan, layout: _Layout, target: torch.Tensor, flat: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    kernel_grads = [ctx.needs_input_grad[4 + i] or ctx.needs_input_grad[5 + i] for i in range(0, len(flat), 3)]
    heads = [_Head(*flat[3 * n : 3 * n + 3], kernel_grad, layout) for n, kernel_grad in enumerate(kernel_grads)]
    batch, classes = target.shape[0], heads[0].classes
    voxels = batch * layout.voxels
    labels = _digits_first(target.long(), layout.levels, layout.coarse)[:, 0]  # (B, voxels) in the heads' order
    device = labels.device

    # gradients of each group's KL per unit weight of its term, known as soon as a block is done
    kl_grads = {i: heads[i].zero_grads() for i in _kl_gradient_groups(plan)}
    # softmax of the deep-supervised heads and its value at the label, kept for the Dice gradient
    kept: dict[int, list[list[tuple[torch.Tensor, torch.Tensor]]]] = {
        i: [[] for _ in range(batch)] for i in plan.supervised
    }
    stats = torch.zeros(len(plan.supervised), 3, batch, classes, dtype=torch.float64, device=device)  # I, P, G
    cross_entropy = torch.zeros(len(plan.supervised), dtype=torch.float64, device=device)
    kl_sums = torch.zeros(len(plan.groups), dtype=torch.float64, device=device)
    kl_scale = plan.tau / voxels
    distilled = {i for g in plan.groups for i in (g.teacher, *g.students)}

    for b in range(batch):
        for block in range(layout.blocks):
            label = labels[b][layout.block(block)][None]
            logits = {i: heads[i].logits(b, block) for i in plan.supervised}
            softened = {
                i: logits[i] / plan.tau if i in logits else heads[i].logits(b, block, plan.tau) for i in distilled
            }
            if plan.supervised:
                stats[:, 2, b] += torch.bincount(label[0], minlength=classes).to(stats.dtype)
            for n, i in enumerate(plan.supervised):
                log_p = F.log_softmax(logits[i], dim=0)
                log_p_label = log_p.gather(0, label)
                cross_entropy[n] -= log_p_label.sum(dtype=torch.float64)
                p, p_label = log_p.exp_(), log_p_label.exp_()
                kept[i][b].append((p, p_label))
                stats[n, 0, b].index_add_(0, label[0], p_label[0].to(stats.dtype))
                stats[n, 1, b] += p.sum(1, dtype=torch.float64)
            for g, group in enumerate(plan.groups):
                log_q_teacher = F.log_softmax(softened[group.teacher], dim=0)
                q_teacher = log_q_teacher.exp()
                divergence = log_q_teacher.mul_(len(group.students))
                for i in group.students:
                    log_q = F.log_softmax(softened[i], dim=0)
                    divergence -= log_q
                    heads[i].backward_block(b, block, log_q.exp_().sub_(q_teacher).mul_(kl_scale), *kl_grads[i])
                kl_voxel = (q_teacher * divergence).sum(0)
                kl_sums[g] += kl_voxel.sum(dtype=torch.float64)
                if not plan.detach_teacher:
                    grad = divergence.sub_(kl_voxel).mul_(q_teacher).mul_(kl_scale)
                    heads[group.teacher].backward_block(b, block, grad, *kl_grads[group.teacher])

    settings = plan.dice_ce
    intersection, predicted, ground = stats[:, 0], stats[:, 1], stats[:, 2]
    if settings.batch:
        intersection, predicted, ground = (s.sum(1, keepdim=True) for s in (intersection, predicted, ground))
    denominator = predicted + ground + settings.smooth_dr
    dice = 1.0 - (2.0 * intersection + settings.smooth_nr) / denominator
    first = 0 if settings.include_background else 1
    deep_supervision = (
        settings.lambda_dice * dice[..., first:].mean((1, 2)) + settings.lambda_ce * cross_entropy / voxels
    ).sum()
    kl_terms = kl_sums * plan.tau**2 / voxels

    for n, head in enumerate(heads):
        if n not in plan.supervised:
            head.low = None  # only the Dice gradient's blocks read it again
    ctx.plan, ctx.layout, ctx.voxels, ctx.device_type = plan, layout, voxels, device.type
    ctx.heads, ctx.labels, ctx.kl_grads, ctx.kept = heads, labels, kl_grads, kept
    ctx.dice_stats = (intersection, denominator, first)
    ctx.dtypes = [t.dtype for t in flat]
    dtype = heads[0].dtype
    return (deep_supervision.to(dtype), *(k.to(dtype) for k in kl_terms))


def _kl_gradient_groups(plan: _Plan) -> dict[int, int]:
    """Each head that receives a distillation gradient, with the index of its group."""
    return {
        i: g
        for g, group in enumerate(plan.groups)
        for i in (group.students if plan.detach_teacher else (group.teacher, *group.students))
    }


def _backward(ctx: Any, grad_terms: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    if ctx.kept is None:
        raise RuntimeError(
            "DSD loss: backward through the blockwise head terms a second time; their buffers are freed by the first."
        )
    plan: _Plan = ctx.plan
    heads: list[_Head] = ctx.heads
    kl_grads, kept = ctx.kl_grads, ctx.kept
    ctx.kl_grads = ctx.kept = None  # each buffer goes as soon as it has been used
    grad_ds, grad_kl = grad_terms[0], grad_terms[1:]
    grads: list[list[torch.Tensor] | None] = [None] * len(heads)
    for i, g in _kl_gradient_groups(plan).items():
        grads[i] = [t.mul_(grad_kl[g]) for t in kl_grads.pop(i)]

    if plan.supervised:
        settings = plan.dice_ce
        intersection, denominator, first = ctx.dice_stats
        batch, classes, dtype = ctx.labels.shape[0], heads[0].classes, heads[0].dtype
        # d(mean Dice)/d(p_k) = A_k * onehot_k + C_k for each head, batch item and class
        count = denominator.shape[1] * (classes - first)
        scale = grad_ds.double() * settings.lambda_dice / count
        coefficient_a = -2.0 * scale / denominator
        coefficient_c = (2.0 * intersection + settings.smooth_nr) * scale / denominator**2
        coefficient_a[..., :first] = 0.0
        coefficient_c[..., :first] = 0.0
        coefficient_a = coefficient_a.to(dtype).expand(-1, batch, -1)
        coefficient_c = coefficient_c.to(dtype).expand(-1, batch, -1)
        ce_scale = grad_ds.to(dtype) * settings.lambda_ce / ctx.voxels
        for n, i in enumerate(plan.supervised):
            if grads[i] is None:
                grads[i] = heads[i].zero_grads()
            for b in range(batch):
                off_label = (coefficient_c[n, b] + ce_scale)[:, None]
                for block, (p, p_label) in enumerate(kept[i][b]):
                    label = ctx.labels[b][ctx.layout.block(block)][None]
                    # p * (a + c_ce - <a, p>) - c_ce * onehot, with a = A * onehot + C
                    label_a_p = coefficient_a[n, b][label] * p_label
                    inner = label_a_p + coefficient_c[n, b][None] @ p
                    grad = (off_label - inner).mul_(p)
                    grad.scatter_add_(0, label, label_a_p.sub_(ce_scale))
                    heads[i].backward_block(b, block, grad, *grads[i])
                kept[i][b] = []

    result: list[torch.Tensor | None] = []
    for i, head in enumerate(heads):
        dtypes = ctx.dtypes[3 * i : 3 * i + 3]
        result += [None, None, None] if grads[i] is None else head.input_grads(grads[i], dtypes)
    return result
