from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import HausdorffDistanceMetric

from custom.metrics import PhysicalHausdorffDistanceMetric

SHAPE = (16, 12, 10)


def _box(offset: tuple[int, int, int] = (0, 0, 0)) -> torch.Tensor:
    """One-hot (2, *SHAPE) volume with a 4x4x4 foreground box, shifted by ``offset`` voxels."""
    fg = torch.zeros(SHAPE)
    x, y, z = (3 + o for o in offset)
    fg[x : x + 4, y : y + 4, z : z + 4] = 1
    return torch.stack([1 - fg, fg])


def _shift(axis: int, voxels: int) -> tuple[int, int, int]:
    return tuple(voxels if a == axis else 0 for a in range(3))  # type: ignore[return-value]


def _affine(spacing) -> torch.Tensor:
    return torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))


def _case(spacing, axis: int, voxels: int) -> tuple[MetaTensor, MetaTensor]:
    """Channel-first (pred, label) with the box of pred shifted ``voxels`` along ``axis``."""
    affine = _affine(spacing)
    return MetaTensor(_box(_shift(axis, voxels)), affine=affine), MetaTensor(_box(), affine=affine)


@pytest.mark.parametrize(
    "spacing, axis, voxels, expected_mm",
    [
        ((2.0, 1.0, 1.0), 0, 3, 6.0),  # along the 2 mm axis: mm = voxels * 2
        ((2.0, 1.0, 1.0), 0, 1, 2.0),
        ((2.0, 1.0, 1.0), 1, 3, 3.0),  # along a 1 mm axis: unchanged
        ((1.0, 1.0, 1.0), 0, 3, 3.0),
        ((0.5, 0.8, 2.5), 2, 2, 5.0),
    ],
)
def test_distance_in_mm_from_affine(spacing, axis, voxels, expected_mm):
    pred, label = _case(spacing, axis, voxels)
    metric = PhysicalHausdorffDistanceMetric()
    value = metric(pred.unsqueeze(0), label.unsqueeze(0))
    assert value.shape == (1, 1)
    assert value.item() == pytest.approx(expected_mm, rel=1e-6)


def test_batched_metatensor_with_per_case_affines():
    cases = [_case((2.0, 1.0, 1.0), 0, 3), _case((1.0, 3.0, 1.0), 1, 2)]
    batch = list_data_collate([{"pred": p, "label": lb} for p, lb in cases])
    assert batch["label"].affine.shape == (2, 4, 4)
    value = PhysicalHausdorffDistanceMetric()(batch["pred"], batch["label"])
    np.testing.assert_allclose(value.numpy().ravel(), [6.0, 6.0], rtol=1e-6)


@pytest.mark.parametrize(
    "explicit, expected", [(1.0, 3.0), ((1.0, 1.0, 1.0), 3.0), ((4.0, 1.0, 1.0), 12.0), ([[3.0, 1.0, 1.0]], 9.0)]
)
def test_explicit_spacing_overrides_affine(explicit, expected):
    pred, label = _case((2.0, 1.0, 1.0), 0, 3)
    value = PhysicalHausdorffDistanceMetric()(pred.unsqueeze(0), label.unsqueeze(0), spacing=explicit)
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("percentile", [None, 95])
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("axis, voxels", [(0, 3), (2, 2)])
def test_agrees_with_plain_metric_at_unit_spacing(percentile, include_background, axis, voxels):
    pred, label = _case((1.0, 1.0, 1.0), axis, voxels)
    kwargs = {"percentile": percentile, "include_background": include_background}
    physical = PhysicalHausdorffDistanceMetric(**kwargs)(pred.unsqueeze(0), label.unsqueeze(0))
    plain = HausdorffDistanceMetric(**kwargs)(pred.unsqueeze(0).as_tensor(), label.unsqueeze(0).as_tensor())
    torch.testing.assert_close(physical, plain)
    # on plain tensors (no affine) the subclass measures in voxels, as its parent
    pred2, label2 = _case((2.0, 1.0, 1.0), axis, voxels)
    no_meta = PhysicalHausdorffDistanceMetric(**kwargs)(pred2.unsqueeze(0).as_tensor(), label2.unsqueeze(0).as_tensor())
    torch.testing.assert_close(no_meta, plain)


def test_decollated_lists_give_per_case_values():
    """As in an Ignite evaluator after decollation: lists of channel-first MetaTensors with different affines."""
    specs = [((2.0, 1.0, 1.0), 0, 3, 6.0), ((1.0, 1.0, 1.0), 0, 3, 3.0), ((1.0, 0.5, 1.0), 1, 4, 2.0)]
    preds, labels = zip(*(_case(s, a, v) for s, a, v, _ in specs))
    value = PhysicalHausdorffDistanceMetric()(list(preds), list(labels))
    np.testing.assert_allclose(value.numpy().ravel(), [e for *_, e in specs], rtol=1e-6)


@pytest.mark.parametrize("percentile", [None, 95, 50])
def test_through_ignite_metric_handler(percentile):
    specs = [((2.0, 1.0, 1.0), 0, 3, 6.0), ((1.0, 1.0, 1.0), 0, 2, 2.0), ((1.0, 1.0, 3.0), 2, 1, 3.0)]
    cases = [_case(s, a, v) for s, a, v, _ in specs]
    # per-case reference: the parent metric given each case's spacing explicitly
    plain = HausdorffDistanceMetric(percentile=percentile)
    expected = [
        plain(p.unsqueeze(0).as_tensor(), lb.unsqueeze(0).as_tensor(), spacing=s).item()
        for (p, lb), (s, *_) in zip(cases, specs)
    ]
    if percentile is None:
        np.testing.assert_allclose(expected, [e for *_, e in specs], rtol=1e-6)
    # two iterations: a batch of two cases, then one; the evaluator decollates each batch
    batches = [
        list_data_collate([{"pred": p, "label": lb} for p, lb in cases[:2]]),
        list_data_collate([{"pred": p, "label": lb} for p, lb in cases[2:]]),
    ]

    def step(engine, batch):
        return decollate_batch(batch)

    evaluator = Engine(step)
    handler = IgniteMetricHandler(
        metric_fn=PhysicalHausdorffDistanceMetric(percentile=percentile, reduction="mean"),
        output_transform=from_engine(["pred", "label"]),
        save_details=True,
    )
    handler.attach(evaluator, "hd_mm")
    evaluator.run(batches, max_epochs=1)
    details = evaluator.state.metric_details["hd_mm"]
    np.testing.assert_allclose(np.asarray(details).ravel(), expected, rtol=1e-6)
    assert evaluator.state.metrics["hd_mm"] == pytest.approx(np.mean(expected), rel=1e-6)
