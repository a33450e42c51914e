"""Tumour regions from MSD labels, and Hausdorff distances that stay defined when a region is empty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.metrics import HausdorffDistanceMetric

from custom.definitions import BRATS_REGIONS
from custom.metrics import EmptyAwareHausdorffDistanceMetric, PhysicalHausdorffDistanceMetric
from custom.transforms import LabelsToRegionsd

_FILE = "/data/Task01_BrainTumour/labelsTr/BRATS_001.nii.gz"


def msd_labels_apart() -> torch.Tensor:
    """A (1, 6, 6, 6) MSD label map whose non-enhancing (2) and enhancing (3) parts do not touch."""
    label = torch.zeros(1, 6, 6, 6)
    label[0, 1:5, 1:5, 1:5] = 1  # edema
    label[0, 1:2, 1:3, 1:3] = 2  # non-enhancing tumour, one corner
    label[0, 4:5, 3:5, 3:5] = 3  # enhancing tumour, the opposite corner
    return label


def test_msd_regions_follow_the_msd_label_meanings():
    label = msd_labels_apart()
    regions = LabelsToRegionsd("label", list(BRATS_REGIONS.values()))({"label": label})["label"]
    whole, core, enhancing = regions
    assert torch.equal(whole, label[0] > 0)
    assert torch.equal(core, (label[0] == 2) | (label[0] == 3))
    assert torch.equal(enhancing, label[0] == 3)  # label 2 is not enhancing in MSD coding
    assert int(core.sum()) == 4 + 4 and int(enhancing.sum()) == 4


@pytest.mark.parametrize("kind", ["numpy_uint8", "torch_float", "meta_float"])
def test_regions_keep_type_and_meta(kind):
    label = msd_labels_apart()
    if kind == "numpy_uint8":
        label = label.numpy().astype(np.uint8)
    elif kind == "meta_float":
        affine = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0]))
        label = MetaTensor(label, affine=affine, meta={"filename_or_obj": _FILE})
    out = LabelsToRegionsd("label", [[1, 2, 3], [3]])({"label": label, "image": label})
    assert type(out["label"]) is type(label) and out["label"].shape == (2, 6, 6, 6)
    assert out["label"].dtype == label.dtype and out["image"] is label
    if kind == "meta_float":
        assert out["label"].meta["filename_or_obj"] == _FILE
        assert torch.equal(out["label"].affine, label.affine)


def test_regions_need_a_single_channel_label_map():
    label = MetaTensor(torch.zeros(4, 3, 3, 3), meta={"filename_or_obj": _FILE})
    with pytest.raises(ValueError, match="BRATS_001.nii.gz"):
        LabelsToRegionsd("label", [[1]])({"label": label})


@pytest.mark.parametrize("regions", [[], [[1, 2], []]])
def test_regions_must_name_labels(regions):
    with pytest.raises(ValueError):
        LabelsToRegionsd("label", regions)


def _channels(*masks: torch.Tensor, spacing=(1.0, 1.0, 1.0)) -> MetaTensor:
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.stack(masks)[None].float(), affine=affine)


_EMPTY = torch.zeros(12, 12, 12)
_CUBE = torch.zeros(12, 12, 12)
_CUBE[3:7, 3:7, 3:7] = 1


@pytest.mark.parametrize(
    "pred, truth, expected",
    [
        pytest.param(_EMPTY, _EMPTY, 0.0, id="both-empty"),
        pytest.param(_CUBE, _EMPTY, math.sqrt(3) * 12, id="false-positive"),
        pytest.param(_EMPTY, _CUBE, math.sqrt(3) * 12, id="missed"),
        pytest.param(_CUBE, _CUBE, 0.0, id="exact"),
    ],
)
def test_empty_regions_get_the_brats_values(pred, truth, expected):
    metric = EmptyAwareHausdorffDistanceMetric(include_background=True, percentile=95)
    distance = metric(_channels(pred), _channels(truth))
    assert distance.shape == (1, 1)
    assert float(distance) == pytest.approx(expected)


def test_penalty_is_the_brats_diagonal_for_an_msd_grid():
    # 48 x 48 x 31 voxels of 5 x 5 x 5 mm span MSD's 240 x 240 x 155 mm.
    empty, cube = torch.zeros(48, 48, 31), torch.zeros(48, 48, 31)
    cube[10:20, 10:20, 10:20] = 1
    metric = EmptyAwareHausdorffDistanceMetric(include_background=True, percentile=95)
    distance = metric(_channels(empty, spacing=(5.0, 5.0, 5.0)), _channels(cube, spacing=(5.0, 5.0, 5.0)))
    assert float(distance) == pytest.approx(373.13, abs=0.01)


def test_fixed_penalty_and_background_channel():
    metric = EmptyAwareHausdorffDistanceMetric(include_background=False, percentile=95, empty_distance=99.0)
    distance = metric(_channels(_CUBE, _CUBE, _EMPTY), _channels(_EMPTY, _CUBE, _CUBE))
    assert distance.tolist() == [[0.0, 99.0]]


def test_non_empty_regions_match_monai_in_millimetres():
    shifted = torch.roll(_CUBE, shifts=2, dims=0)
    pred, truth = _channels(shifted, spacing=(2.0, 1.0, 1.0)), _channels(_CUBE, spacing=(2.0, 1.0, 1.0))
    ours = EmptyAwareHausdorffDistanceMetric(include_background=True, percentile=95)(pred, truth)
    physical = PhysicalHausdorffDistanceMetric(include_background=True, percentile=95)(pred, truth)
    plain = HausdorffDistanceMetric(include_background=True, percentile=95)(pred, truth, spacing=[2.0, 1.0, 1.0])
    assert float(ours) == pytest.approx(float(physical)) == pytest.approx(float(plain)) == pytest.approx(4.0)


def test_aggregate_is_never_nan():
    metric = EmptyAwareHausdorffDistanceMetric(include_background=True, percentile=95, reduction="mean")
    metric(_channels(_EMPTY, _CUBE), _channels(_EMPTY, _EMPTY))
    metric(_channels(_CUBE, _CUBE), _channels(_CUBE, _EMPTY))
    aggregate = metric.aggregate()
    assert not torch.isnan(aggregate).any()
