"""Surface-distance metrics in physical units for Ignite-based MONAI workflows."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.metrics import HausdorffDistanceMetric

__all__ = ["PhysicalHausdorffDistanceMetric"]


class PhysicalHausdorffDistanceMetric(HausdorffDistanceMetric):
    """Hausdorff distance in millimetres, with the voxel spacing read from the label's affine.

    MONAI's metric handlers call the metric without a ``spacing`` argument, which makes
    :class:`monai.metrics.HausdorffDistanceMetric` measure in voxels. This subclass takes the spacing
    of each case from the ``affine`` of ``y`` (a :class:`monai.data.MetaTensor`); an explicit
    ``spacing`` still wins. Arguments are those of :class:`~monai.metrics.HausdorffDistanceMetric`.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("spacing") is None and isinstance(y, MetaTensor):
            kwargs["spacing"] = _spacing(y)
        return super()._compute_tensor(y_pred, y, **kwargs)


def _spacing(y: MetaTensor) -> list[list[float]]:
    spatial_dims = y.ndim - 2
    affine = y.affine
    affines = affine if affine.ndim == 3 else affine.unsqueeze(0).expand(y.shape[0], -1, -1)
    return [affine_to_spacing(a, r=spatial_dims).tolist() for a in affines]
