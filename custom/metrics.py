"""Surface-distance metrics in physical units for Ignite-based MONAI workflows."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.metrics import HausdorffDistanceMetric
from monai.metrics.utils import ignore_background, prepare_spacing
from monai.utils import convert_to_tensor

__all__ = ["PhysicalHausdorffDistanceMetric", "EmptyAwareHausdorffDistanceMetric"]


class PhysicalHausdorffDistanceMetric(HausdorffDistanceMetric):
    """Hausdorff distance in millimetres, with the voxel spacing read from the label's affine.

    MONAI's metric handlers call the metric without a ``spacing`` argument, which makes
    :class:`monai.metrics.HausdorffDistanceMetric` measure in voxels. This subclass takes the spacing
    of each case from the ``affine`` of ``y`` (a :class:`monai.data.MetaTensor`); an explicit
    ``spacing`` still wins. Arguments are those of :class:`~monai.metrics.HausdorffDistanceMetric`.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return super()._compute_tensor(y_pred, y, **_with_spacing(y, kwargs))


def _with_spacing(y: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``spacing`` taken from the affine of ``y`` unless given."""
    if kwargs.get("spacing") is None and isinstance(y, MetaTensor):
        kwargs = {**kwargs, "spacing": _spacing(y)}
    return kwargs


def _spacing(y: MetaTensor) -> list[list[float]]:
    spatial_dims = y.ndim - 2
    affine = y.affine
    affines = affine if affine.ndim == 3 else affine.unsqueeze(0).expand(y.shape[0], -1, -1)
    return [affine_to_spacing(a, r=spatial_dims).tolist() for a in affines]


class EmptyAwareHausdorffDistanceMetric(PhysicalHausdorffDistanceMetric):
    """Hausdorff distance in millimetres that is defined when a channel is empty, as in the BraTS challenge.

    MONAI's Hausdorff distance is NaN whenever the prediction or the ground truth of a channel is
    empty, and summaries then drop those cases: a region that the model misses altogether would not
    count against it. This metric instead gives 0 when both are empty, and ``empty_distance`` when
    exactly one is. By default that penalty is the diagonal of the image grid in millimetres, the
    largest distance possible in the image: 373.13 mm for a 240 x 240 x 155 grid of 1 mm voxels, the
    value the BraTS challenge uses. Pair it with ``DiceMetric(ignore_empty=False)``, whose Dice is 1
    when both are empty and 0 when exactly one is, and no case is NaN.

    Args:
        empty_distance: the distance when exactly one of prediction and ground truth is empty, in
            millimetres; ``None`` for the diagonal of each case's image grid.
        kwargs: arguments of :class:`~monai.metrics.HausdorffDistanceMetric`.
    """

    def __init__(self, empty_distance: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.empty_distance = empty_distance

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs = _with_spacing(y, kwargs)
        with warnings.catch_warnings():
            # Empty channels are expected here and handled below; MONAI warns about each one.
            warnings.filterwarnings("ignore", message=r"the (ground truth|prediction) of class")
            distance = super()._compute_tensor(y_pred, y, **kwargs)
        if not self.include_background:
            y_pred, y = ignore_background(y_pred=y_pred, y=y)
        distance = convert_to_tensor(distance, track_meta=False)
        pred_empty = ~convert_to_tensor(y_pred, track_meta=False).flatten(2).bool().any(-1).to(distance.device)
        true_empty = ~convert_to_tensor(y, track_meta=False).flatten(2).bool().any(-1).to(distance.device)
        penalty = self._empty_distance(y, kwargs.get("spacing")).to(distance)
        distance = torch.where(pred_empty ^ true_empty, penalty[:, None].expand_as(distance), distance)
        return torch.where(pred_empty & true_empty, torch.zeros_like(distance), distance)

    def _empty_distance(self, y: torch.Tensor, spacing: Any) -> torch.Tensor:
        batch_size, spatial = y.shape[0], y.shape[2:]
        if self.empty_distance is not None:
            return torch.full((batch_size,), float(self.empty_distance))
        diagonals = []
        for case_spacing in prepare_spacing(spacing=spacing, batch_size=batch_size, img_dim=len(spatial)):
            voxel = np.broadcast_to(np.asarray(1.0 if case_spacing is None else case_spacing, float), len(spatial))
            diagonals.append(float(np.linalg.norm(np.asarray(spatial, float) * voxel)))
        return torch.tensor(diagonals)
