"""The Dual Self-Distillation loss (paper eq. 4) and the paper's ablation presets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss

from custom.blockwise_loss import DiceCESettings, KLGroup, blockwise_head_terms
from custom.definitions import TERM_NAMES, ablation_weights
from custom.networks import DECODER_KEY, ENCODER_KEY, PRED_KEY, DeferredLogits
from custom.reproducibility import deterministic_cross_entropy

__all__ = ["DSDLoss", "distillation_kl"]


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float, detach_teacher: bool = False
) -> torch.Tensor:
    """Pixel-wise KL(teacher || student) of temperature-softened class distributions, times tau^2.

    Summed over the class axis (dim 1), averaged over batch and voxels.

    Args:
        student_logits: ``(B, K, *spatial)`` logits of the student head.
        teacher_logits: logits of the teacher head, same shape.
        tau: softmax temperature.
        detach_teacher: stop the gradient through the teacher.
    """
    if detach_teacher:
        teacher_logits = teacher_logits.detach()
    log_student = F.log_softmax(student_logits / tau, dim=1)
    log_teacher = F.log_softmax(teacher_logits / tau, dim=1)
    voxels = student_logits.numel() // student_logits.shape[1]
    kl = F.kl_div(log_student, log_teacher, reduction="sum", log_target=True)
    return kl / voxels * tau**2


class DSDLoss(nn.Module):
    """Dual Self-Distillation loss, paper eq. 4::

        L = DiceCE(Y, G) + eta * sum_i DiceCE(D_i, G)
            + alpha1 * sum_{i<Z} KL(E_Z -> E_i) + alpha2 * sum_{i>1} KL(D_1 -> D_i)

    The deepest encoder E_Z (last of ``outputs["encoder"]``) teaches the shallower encoders, the
    deepest decoder D_1 (first of ``outputs["decoder"]``) teaches the shallower decoders; the main
    output takes no part in distillation. Terms whose weight is zero are not computed. Given a
    plain tensor instead of the :class:`~custom.networks.DSDNet` dictionary (e.g. an eval-mode
    output), the loss is ``DiceCE(Y, G)``.

    Heads given as full-resolution tensors are computed term by term as eq. 4 reads. Heads given as
    :class:`~custom.networks.DeferredLogits` (``DSDNet(defer_upsampling=True)``) go through
    :func:`custom.blockwise_loss.blockwise_head_terms`, which gives the same terms and gradients block by
    block without holding full-resolution logits; with DiceCE options it does not reproduce, they
    are upsampled and computed term by term.

    By default the teacher is not detached, as in the authors' code: the KL terms then also pull the
    teacher towards its students. ``detach_teacher=True`` gives classic one-way distillation; note
    that encoder heads get no deep supervision, so with a detached teacher the encoder teacher's
    head receives no gradient at all and the encoder students learn from its initial projection.

    Args:
        eta: weight of deep supervision of every decoder head.
        alpha1: weight of the encoder distillation terms.
        alpha2: weight of the decoder distillation terms.
        tau: distillation temperature.
        detach_teacher: stop gradients through the teacher logits of the KL terms.
        dice_ce_kwargs: arguments of :class:`monai.losses.DiceCELoss`; defaults to
            ``include_background=True, to_onehot_y=True, softmax=True``.
        eta_encoder: weight of deep supervision of every encoder head, the term ``encoder_supervision``,
            ``eta_encoder * sum_i DiceCE(E_i, G)``. **Beyond the paper**, whose eq. 4 gives the encoder heads no
            supervised term: 0 (the default) is the paper's loss. A positive value lets the encoder teacher learn
            from the labels as well as from its students.

    Raises:
        ValueError: a negative weight or a non-positive temperature.
    """

    def __init__(
        self,
        eta: float = 1.0,
        alpha1: float = 1.0,
        alpha2: float = 1.0,
        tau: float = 3.0,
        detach_teacher: bool = False,
        dice_ce_kwargs: Mapping[str, Any] | None = None,
        eta_encoder: float = 0.0,
    ) -> None:
        super().__init__()
        if min(eta, alpha1, alpha2, eta_encoder) < 0:
            raise ValueError(
                f"Loss weights must be non-negative, got eta={eta}, alpha1={alpha1}, alpha2={alpha2}, "
                f"eta_encoder={eta_encoder}."
            )
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}.")
        self.eta, self.alpha1, self.alpha2, self.tau = float(eta), float(alpha1), float(alpha2), float(tau)
        self.eta_encoder = float(eta_encoder)
        self.detach_teacher = detach_teacher
        kwargs = {"include_background": True, "to_onehot_y": True, "softmax": True, **(dice_ce_kwargs or {})}
        self.dice_ce = DiceCELoss(**kwargs)
        # MONAI's reduced cross-entropy sums with atomics on CUDA: not reproducible, and refused when deterministic
        self.dice_ce.cross_entropy = deterministic_cross_entropy(self.dice_ce.cross_entropy)
        self.blockwise_settings = DiceCESettings.from_kwargs(kwargs)
        self.latest_terms: dict[str, torch.Tensor] = {}

    @classmethod
    def from_ablation(cls, name: str, **kwargs: Any) -> DSDLoss:
        """Build the loss of one paper ablation row (Basic, DS, SDD, SDE, DSD); ``kwargs`` as ``__init__``."""
        return cls(**ablation_weights(name), **kwargs)

    def forward(self, outputs: torch.Tensor | Mapping[str, Any], target: torch.Tensor) -> torch.Tensor:
        """Compute the loss and keep each term, detached, in :attr:`latest_terms`.

        Args:
            outputs: the training output of :class:`~custom.networks.DSDNet`, or plain logits.
            target: ``(B, 1, *spatial)`` class-index labels.
        """
        if isinstance(outputs, torch.Tensor):
            outputs = {PRED_KEY: outputs, ENCODER_KEY: [], DECODER_KEY: []}
        main = self.dice_ce(outputs[PRED_KEY], target)
        zero = main.new_zeros(())
        encoders: Sequence[torch.Tensor | DeferredLogits] = outputs[ENCODER_KEY]
        decoders: Sequence[torch.Tensor | DeferredLogits] = outputs[DECODER_KEY]
        encoder_supervision = self._encoder_supervision(encoders, target) if self.eta_encoder and encoders else zero
        if any(isinstance(head, DeferredLogits) for head in (*encoders, *decoders)):
            blockwise = self._blockwise_terms(encoders, decoders, target, zero) if self.blockwise_settings is not None else None
            if blockwise is not None:
                return self._total(main, *blockwise, encoder_supervision)
            encoders, decoders = ([_upsampled(h) for h in heads] for heads in (encoders, decoders))
        deep_supervision = sum((self.dice_ce(d, target) for d in decoders), zero) if self.eta else zero
        kl_encoder = self._distill(encoders[-1], encoders[:-1]) if self.alpha1 and encoders else zero
        kl_decoder = self._distill(decoders[0], decoders[1:]) if self.alpha2 and decoders else zero
        return self._total(main, deep_supervision, kl_encoder, kl_decoder, encoder_supervision)

    def _total(
        self,
        main: torch.Tensor,
        deep_supervision: torch.Tensor,
        kl_encoder: torch.Tensor,
        kl_decoder: torch.Tensor,
        encoder_supervision: torch.Tensor,
    ) -> torch.Tensor:
        total = main + self.eta * deep_supervision + self.alpha1 * kl_encoder + self.alpha2 * kl_decoder
        total = total + self.eta_encoder * encoder_supervision
        terms = (total, main, deep_supervision, kl_encoder, kl_decoder, encoder_supervision)
        self.latest_terms = {name: value.detach() for name, value in zip(TERM_NAMES, terms)}
        return total

    def _encoder_supervision(
        self, encoders: Sequence[torch.Tensor | DeferredLogits], target: torch.Tensor
    ) -> torch.Tensor:
        """``sum_i DiceCE(E_i, G)`` over the encoder heads: blockwise where they are deferred, else term by term."""
        if self.blockwise_settings is not None and any(isinstance(head, DeferredLogits) for head in encoders):
            every_head = list(range(len(encoders)))
            terms = blockwise_head_terms(
                list(encoders), target, every_head, [], self.tau, self.detach_teacher, self.blockwise_settings
            )
            if terms is not None:
                return terms[0]
        return sum(self.dice_ce(_upsampled(head), target) for head in encoders)

    @property
    def uses_encoder_heads(self) -> bool:
        """Whether any term reads the encoder heads; a network may skip building them otherwise."""
        return self.alpha1 > 0 or self.eta_encoder > 0

    @property
    def uses_decoder_heads(self) -> bool:
        """Whether any term reads the decoder heads; a network may skip building them otherwise."""
        return self.eta > 0 or self.alpha2 > 0

    def _blockwise_terms(
        self,
        encoders: Sequence[torch.Tensor | DeferredLogits],
        decoders: Sequence[torch.Tensor | DeferredLogits],
        target: torch.Tensor,
        zero: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Deep supervision and both distillation sums in one blockwise pass over the heads, if possible."""
        heads = [*encoders, *decoders]
        decoder_index = list(range(len(encoders), len(heads)))
        supervised = decoder_index if self.eta else []
        groups, names = [], []
        if self.alpha1 and len(encoders) > 1:
            groups.append(KLGroup(len(encoders) - 1, tuple(range(len(encoders) - 1))))
            names.append("encoder")
        if self.alpha2 and len(decoders) > 1:
            groups.append(KLGroup(decoder_index[0], tuple(decoder_index[1:])))
            names.append("decoder")
        if not supervised and not groups:
            return zero, zero, zero
        used = sorted({*supervised, *(i for g in groups for i in (g.teacher, *g.students))})
        position = {i: n for n, i in enumerate(used)}
        terms = blockwise_head_terms(
            [heads[i] for i in used],
            target,
            [position[i] for i in supervised],
            [KLGroup(position[g.teacher], tuple(position[i] for i in g.students)) for g in groups],
            self.tau,
            self.detach_teacher,
            self.blockwise_settings,
        )
        if terms is None:
            return None
        kl = dict(zip(names, terms[1:]))
        return terms[0] if supervised else zero, kl.get("encoder", zero), kl.get("decoder", zero)

    def _distill(self, teacher: torch.Tensor, students: Sequence[torch.Tensor]) -> torch.Tensor:
        """``sum_i distillation_kl(students[i], teacher)`` in one pass over the teacher.

        The KL terms of one teacher share its log-probabilities, so their sum is
        ``sum p_t * (n * log p_t - sum_i log p_i)``: the teacher's softmax is computed once and the
        class-wise product once, whatever the number of students.
        """
        if not students:
            return teacher.new_zeros(())
        if self.detach_teacher:
            teacher = teacher.detach()
        log_teacher = F.log_softmax(teacher / self.tau, dim=1)
        log_students = sum(F.log_softmax(s / self.tau, dim=1) for s in students)
        voxels = teacher.numel() // teacher.shape[1]
        kl = (log_teacher.exp() * (len(students) * log_teacher - log_students)).sum()
        return kl / voxels * self.tau**2


def _upsampled(head: torch.Tensor | DeferredLogits) -> torch.Tensor:
    return head.upsample() if isinstance(head, DeferredLogits) else head
