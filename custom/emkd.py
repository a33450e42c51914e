"""EMKD (Qin et al., IEEE TMI 2021): the distillation terms of a frozen teacher for a compact student, and their loss.

- PMD, prediction-map distillation: KL(teacher || student) of the class distributions softened at temperature T.
- IMD, importance-map distillation: squared L2 between attention maps ``normalize(mean over channels of F^p)`` of
  matched feature maps; the maps are channel-free, so teacher and student may differ in channels, and the teacher's
  map is resized to the student's.
- RAD, region-affinity distillation: squared L2 between the cosine affinities of the mean feature vectors of the
  labelled regions, for every pair of classes present in an item (the paper's foreground/background pair,
  generalised to 3-D multi-class labels).

The training network is :class:`custom.teacher.TeacherStudentNet`; the bundles' ``configs/strategy_emkd.json``
wires both into a training run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss

from custom.definitions import emkd_term_names
from custom.losses import distillation_kl
from custom.networks import PRED_KEY
from custom.teacher import STUDENT_FEATURES_KEY, TEACHER_FEATURES_KEY, TEACHER_PRED_KEY

__all__ = [
    "EMKDLoss",
    "attention_map",
    "importance_map_distillation",
    "prediction_map_distillation",
    "region_affinities",
    "region_affinity_distillation",
    "term_metrics",
]


def prediction_map_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """PMD: KL(teacher || student) of the softmax at ``temperature``, summed over classes, averaged over voxels,
    times ``temperature**2``. No gradient reaches the teacher.

    Args:
        student_logits: ``(B, K, *spatial)``.
        teacher_logits: the teacher's logits, same shape.
        temperature: the softmax temperature T.
    """
    return distillation_kl(student_logits, teacher_logits, temperature, detach_teacher=True)


def attention_map(features: torch.Tensor, power: float = 4, size: Sequence[int] | None = None) -> torch.Tensor:
    """The importance (attention) map of a feature map: ``normalize(mean over channels of F^power)``, flattened.

    Computed in float32, on the features divided by their largest magnitude per item: the map does not change
    (it is invariant to the features' scale), and ``F^power`` cannot overflow.

    Args:
        features: ``(B, C, *spatial)``.
        power: the exponent p.
        size: resize the channel-free map to this spatial size before normalising (area averaging where it
            shrinks, linear interpolation where it grows).

    Returns:
        ``(B, N)`` maps of unit L2 norm, N voxels of ``size`` (or of the features).
    """
    features = features.float()
    peak = features.detach().abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny)
    scaled = features / peak.view(-1, *[1] * (features.dim() - 1))
    energy = scaled.pow(power).mean(1, keepdim=True)
    if size is not None and tuple(size) != tuple(energy.shape[2:]):
        energy = _resize(energy, tuple(size))
    return F.normalize(energy.flatten(1), dim=1)


def _resize(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if all(new <= old for new, old in zip(size, maps.shape[2:])):
        return F.interpolate(maps, size=size, mode="area")
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(maps, size=size, mode=mode, align_corners=False)


def importance_map_distillation(
    student_features: torch.Tensor, teacher_features: torch.Tensor, power: float = 4
) -> torch.Tensor:
    """IMD: squared L2 distance between the student's and the teacher's attention maps, averaged over the batch.

    The teacher's map is resized to the student's spatial size; channel counts may differ. No gradient reaches
    the teacher.

    Args:
        student_features: ``(B, C_s, *spatial_s)``.
        teacher_features: ``(B, C_t, *spatial_t)``.
        power: the exponent p of :func:`attention_map`.
    """
    student = attention_map(student_features, power)
    teacher = attention_map(teacher_features.detach(), power, size=student_features.shape[2:])
    return (student - teacher).pow(2).sum(1).mean()


def region_affinities(features: torch.Tensor, region_weights: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the mean feature vectors of every pair of regions.

    Args:
        features: ``(B, C, *spatial)``.
        region_weights: ``(B, R, *spatial)`` non-negative weight of each voxel in each region (a one-hot label, or
            its area-averaged resize).

    Returns:
        ``(B, R, R)`` affinities; a region without weight has a zero mean and affinity 0 with every region.
    """
    weights = region_weights.float().flatten(2)
    sums = torch.einsum("brn,bcn->brc", weights, features.float().flatten(2))
    means = sums / weights.sum(2, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    unit = F.normalize(means, dim=2)
    return unit @ unit.transpose(1, 2)


def region_affinity_distillation(
    student_features: torch.Tensor, teacher_features: torch.Tensor, label: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """RAD: squared L2 distance between the student's and the teacher's region affinities.

    Each class of the label is a region. The one-hot label is area-averaged to each feature map's own size, so a
    class present in an item keeps a positive weight at every resolution (nearest-neighbour downsampling could drop
    a small structure for one network only). The squared differences are averaged over every pair of distinct
    classes present in each item; classes absent from an item are skipped, and a batch without any such pair gives
    0. No gradient reaches the teacher.

    Args:
        student_features: ``(B, C_s, *spatial_s)``.
        teacher_features: ``(B, C_t, *spatial_t)``.
        label: ``(B, 1, *spatial)`` class indices.
        num_classes: the number of classes K.
    """
    one_hot = F.one_hot(label[:, 0].long(), num_classes).movedim(-1, 1).float()
    present = one_hot.flatten(2).amax(2) > 0
    affinities = [
        region_affinities(features, _resize(one_hot, tuple(features.shape[2:])))
        for features in (student_features, teacher_features.detach())
    ]
    pairs = present[:, :, None] & present[:, None, :] & torch.ones_like(affinities[0], dtype=torch.bool).triu(1)
    squared = (affinities[0] - affinities[1]).pow(2)
    return (squared * pairs).sum() / pairs.sum().clamp_min(1)


class EMKDLoss(nn.Module):
    """The EMKD training loss of a student beside a frozen teacher::

        L = seg + pmd_weight * PMD + imd_weight * sum_pairs IMD + rad_weight * sum_pairs RAD

    with the paper's weights 0.1, 0.9 and 0.9 by default and the pairs of matched feature maps named, e.g.
    ``("low", "high")``. A term with weight 0 is not computed. Given a plain tensor instead of the
    :class:`~custom.teacher.TeacherStudentNet` dictionary (an eval-mode output), the loss is ``seg``.

    Each term is kept, detached, in :attr:`latest_terms` under :func:`custom.definitions.emkd_term_names`:
    ``total``, ``main_dice_ce`` (seg), ``pmd``, ``imd_<pair>``..., ``rad_<pair>``....

    Args:
        pairs: the names of the matched feature pairs, as the network's tap mappings name them.
        pmd_weight: weight of PMD.
        imd_weight: weight of every IMD term.
        rad_weight: weight of every RAD term.
        temperature: PMD's softmax temperature T.
        attention_power: IMD's exponent p.
        segmentation_loss: the student's own loss on the label; MONAI's ``DiceCELoss(include_background=True,
            to_onehot_y=True, softmax=True)``, the bundles' DSD main term, by default.

    Raises:
        ValueError: a negative weight, a non-positive temperature or power, or repeated pair names.
    """

    def __init__(
        self,
        pairs: Sequence[str] = ("low", "high"),
        pmd_weight: float = 0.1,
        imd_weight: float = 0.9,
        rad_weight: float = 0.9,
        temperature: float = 4.0,
        attention_power: float = 4,
        segmentation_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if min(pmd_weight, imd_weight, rad_weight) < 0:
            raise ValueError(
                f"EMKD weights must be non-negative, got pmd={pmd_weight}, imd={imd_weight}, rad={rad_weight}."
            )
        if temperature <= 0 or attention_power <= 0:
            raise ValueError(f"temperature and attention_power must be positive, got {temperature}, {attention_power}.")
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"EMKD pair names must differ, got {list(pairs)}.")
        self.pairs = list(pairs)
        self.pmd_weight, self.imd_weight, self.rad_weight = float(pmd_weight), float(imd_weight), float(rad_weight)
        self.temperature, self.attention_power = float(temperature), float(attention_power)
        self.segmentation_loss = segmentation_loss or DiceCELoss(
            include_background=True, to_onehot_y=True, softmax=True
        )
        self.latest_terms: dict[str, torch.Tensor] = {}

    @property
    def term_names(self) -> tuple[str, ...]:
        """The names of :attr:`latest_terms`, ``"total"`` first."""
        return emkd_term_names(self.pairs)

    def forward(self, outputs: torch.Tensor | Mapping[str, Any], target: torch.Tensor) -> torch.Tensor:
        """Compute the loss and keep each term in :attr:`latest_terms`.

        Args:
            outputs: the training output of :class:`~custom.teacher.TeacherStudentNet`, or plain logits.
            target: ``(B, 1, *spatial)`` class indices.

        Raises:
            KeyError: the outputs' feature pairs are not :attr:`pairs`.
        """
        if isinstance(outputs, torch.Tensor):
            seg = self.segmentation_loss(outputs, target)
            return self._total(seg, seg.new_zeros(()), {}, {})
        student, teacher = outputs[STUDENT_FEATURES_KEY], outputs[TEACHER_FEATURES_KEY]
        if list(student) != self.pairs or list(teacher) != self.pairs:
            raise KeyError(f"EMKDLoss pairs {self.pairs}, but the network gives {list(student)} and {list(teacher)}.")
        pred = outputs[PRED_KEY]
        seg = self.segmentation_loss(pred, target)
        zero = seg.new_zeros(())
        pmd = (
            prediction_map_distillation(pred, outputs[TEACHER_PRED_KEY], self.temperature) if self.pmd_weight else zero
        )
        imd = {
            pair: importance_map_distillation(student[pair], teacher[pair], self.attention_power)
            if self.imd_weight
            else zero
            for pair in self.pairs
        }
        rad = {
            pair: region_affinity_distillation(student[pair], teacher[pair], target, pred.shape[1])
            if self.rad_weight
            else zero
            for pair in self.pairs
        }
        return self._total(seg, pmd, imd, rad)

    def _total(
        self, seg: torch.Tensor, pmd: torch.Tensor, imd: Mapping[str, torch.Tensor], rad: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        zero = seg.new_zeros(())
        imd = {pair: imd.get(pair, zero) for pair in self.pairs}
        rad = {pair: rad.get(pair, zero) for pair in self.pairs}
        total = seg + self.pmd_weight * pmd + self.imd_weight * sum(imd.values()) + self.rad_weight * sum(rad.values())
        values = (total, seg, pmd, *imd.values(), *rad.values())
        self.latest_terms = {name: value.detach() for name, value in zip(self.term_names, values)}
        return total


def term_metrics(loss: EMKDLoss, device: torch.device | str | None = None) -> dict[str, Any]:
    """An epoch mean of every term of ``loss`` but the total, for a trainer's ``additional_metrics``.

    They log to TensorBoard as ``train_<term>``, beside the per-iteration ``train_loss/<term>`` of the bundles'
    ``train#loss_terms``, as the DSD terms do.

    Args:
        loss: the loss whose :attr:`EMKDLoss.latest_terms` are averaged.
        device: the device of the running averages.

    Returns:
        ``{"train_<term>": ignite.metrics.Average}``.
    """
    from ignite.metrics import Average

    return {
        f"train_{name}": Average(output_transform=partial(_latest_term, loss, name), device=device or "cpu")
        for name in loss.term_names[1:]
    }


def _latest_term(loss: EMKDLoss, name: str, output: Any) -> torch.Tensor:
    return loss.latest_terms[name]
