"""EMKD's terms, each against a reference or a property, and the loss that weighs them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from custom.definitions import emkd_term_names
from custom.emkd import (
    EMKDLoss,
    attention_map,
    importance_map_distillation,
    prediction_map_distillation,
    region_affinities,
    region_affinity_distillation,
    term_metrics,
)

K = 4
SPATIAL = (4, 4, 2)

pytestmark = pytest.mark.usefixtures("single_thread")


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_pmd_matches_a_voxel_by_voxel_reference(temperature):
    student, teacher = 3 * _randn(2, K, *SPATIAL, seed=1), 3 * _randn(2, K, *SPATIAL, seed=2)
    per_voxel = []
    for b, *voxel in itertools.product(range(2), *(range(n) for n in SPATIAL)):
        index = (b, slice(None), *voxel)
        p_t = [math.exp(v / temperature) for v in teacher[index].tolist()]
        p_s = [math.exp(v / temperature) for v in student[index].tolist()]
        p_t, p_s = [v / sum(p_t) for v in p_t], [v / sum(p_s) for v in p_s]
        per_voxel.append(sum(t * math.log(t / s) for t, s in zip(p_t, p_s)))
    expected = sum(per_voxel) / len(per_voxel) * temperature**2
    assert prediction_map_distillation(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-10)


def test_imd_matches_the_attention_transfer_formula_and_is_zero_for_equal_maps():
    student, teacher = _randn(2, 3, *SPATIAL, seed=1), _randn(2, 5, *SPATIAL, seed=2)
    maps = [F.normalize(f.pow(4).mean(1).flatten(1).float(), dim=1) for f in (student, teacher)]
    expected = (maps[0] - maps[1]).pow(2).sum(1).mean()
    torch.testing.assert_close(importance_map_distillation(student, teacher), expected)
    assert importance_map_distillation(student, student.clone()) == 0
    # channel-free: a teacher with other channels but the same mean of F^p per voxel matches exactly
    assert importance_map_distillation(student, torch.cat([student, student], 1)).item() == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("scale", [1e-3, 7.0, -2.0, 1e8])
def test_attention_maps_do_not_depend_on_the_feature_scale(scale):
    features = _randn(2, 3, *SPATIAL, seed=3).float()
    torch.testing.assert_close(attention_map(scale * features), attention_map(features), rtol=1e-5, atol=1e-7)
    teacher = _randn(2, 6, 8, 8, 4, seed=4).float()
    torch.testing.assert_close(
        importance_map_distillation(scale * features, teacher),
        importance_map_distillation(features, scale * teacher),
        rtol=1e-4,
        atol=1e-6,
    )


def test_imd_resizes_the_teacher_map_to_the_student_size():
    student = _randn(1, 2, *SPATIAL, seed=5)
    # every student voxel repeated over a 2x2x2 block: the area-averaged map is the student's own
    teacher = student.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    assert importance_map_distillation(student, teacher).item() == pytest.approx(0.0, abs=1e-12)
    coarse = importance_map_distillation(teacher, student)  # a smaller teacher map is interpolated up
    assert math.isfinite(coarse.item()) and coarse >= 0


def _label(seed: int, classes: tuple[int, ...] = tuple(range(K)), shape=SPATIAL) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    choices = torch.tensor(classes)
    return choices[torch.randint(0, len(classes), (2, 1, *shape), generator=generator)]


def test_region_affinities_match_a_hand_computed_pair():
    features, label = _randn(1, 3, 2, 2, 1, seed=6), torch.tensor([0, 0, 1, 0]).view(1, 1, 2, 2, 1)
    one_hot = F.one_hot(label[:, 0], 2).movedim(-1, 1).double()
    flat = features.flatten(2)[0]
    background, foreground = flat[:, [0, 1, 3]].mean(1), flat[:, 2]
    expected = F.cosine_similarity(background, foreground, dim=0)
    affinities = region_affinities(features, one_hot)[0]
    assert affinities[0, 1].item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(affinities, affinities.T)


def test_rad_is_zero_for_equal_affinities_and_positive_otherwise():
    label = _label(7, shape=(8, 8, 4))  # the input size, at least that of every feature map
    student, teacher = _randn(2, 3, *SPATIAL, seed=8), _randn(2, 6, 8, 8, 4, seed=9)
    assert region_affinity_distillation(student, student.clone(), label, K) == 0
    # other channels and size, same region means up to scale: the cosine affinities are equal
    upsampled = student.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    same = region_affinity_distillation(student, 3 * torch.cat([upsampled, upsampled], 1), label, K)
    assert same.item() == pytest.approx(0.0, abs=1e-12)
    assert region_affinity_distillation(student, teacher, label, K) > 0


def test_rad_skips_absent_classes_without_nan():
    present = (0, 2)
    label = _label(10, present)
    student = _randn(2, 3, *SPATIAL, seed=11).requires_grad_()
    teacher = _randn(2, 3, *SPATIAL, seed=12)
    value = region_affinity_distillation(student, teacher, label, K)
    # the same as a two-class problem on the present classes alone
    compact = region_affinity_distillation(student, teacher, (label == 2).long(), 2)
    torch.testing.assert_close(value, compact)
    value.backward()
    assert torch.isfinite(student.grad).all()
    single = region_affinity_distillation(student, teacher, torch.zeros_like(label), K)  # no pair at all
    assert single.item() == 0.0
    single.backward()
    assert torch.isfinite(student.grad).all()


def _outputs(pairs=("low", "high"), seed: int = 0, requires_grad: bool = True) -> tuple[dict, torch.Tensor]:
    def features(channels: int, size: int, offset: int) -> torch.Tensor:
        return _randn(2, channels, size, size, size, seed=seed + offset).float()

    outputs = {
        "pred": _randn(2, K, 8, 8, 8, seed=seed).float().requires_grad_(requires_grad),
        "teacher_pred": _randn(2, K, 8, 8, 8, seed=seed + 1).float(),
        "student_features": {
            p: features(2, 4 // (i + 1), 2 + i).requires_grad_(requires_grad) for i, p in enumerate(pairs)
        },
        "teacher_features": {p: features(5, 8 // (i + 1), 10 + i) for i, p in enumerate(pairs)},
    }
    return outputs, _label(seed, shape=(8, 8, 8))


def test_total_is_the_weighted_sum_and_each_weight_scales_only_its_own_term():
    outputs, label = _outputs()
    base = EMKDLoss()
    total = base(outputs, label)
    terms = dict(base.latest_terms)
    assert list(terms) == list(emkd_term_names(["low", "high"]))
    expected = (
        terms["main_dice_ce"]
        + 0.1 * terms["pmd"]
        + 0.9 * (terms["imd_low"] + terms["imd_high"])
        + 0.9 * (terms["rad_low"] + terms["rad_high"])
    )
    torch.testing.assert_close(total.detach(), expected)
    for weight, names in (
        ("pmd_weight", ["pmd"]),
        ("imd_weight", ["imd_low", "imd_high"]),
        ("rad_weight", ["rad_low", "rad_high"]),
    ):
        loss = EMKDLoss(**{weight: 2.5})
        changed = loss(outputs, label)
        assert {k: v for k, v in loss.latest_terms.items() if k != "total"} == {
            k: v for k, v in terms.items() if k != "total"
        }
        default = getattr(base, weight)
        torch.testing.assert_close(changed.detach(), total.detach() + (2.5 - default) * sum(terms[n] for n in names))


def test_a_zero_weight_term_is_not_computed_and_a_plain_tensor_gives_the_segmentation_loss():
    outputs, label = _outputs()
    loss = EMKDLoss(pmd_weight=0, imd_weight=0, rad_weight=0)
    total = loss(outputs, label)
    assert all(loss.latest_terms[name] == 0 for name in ("pmd", "imd_low", "imd_high", "rad_low", "rad_high"))
    torch.testing.assert_close(total, loss.latest_terms["main_dice_ce"])
    torch.testing.assert_close(EMKDLoss()(outputs["pred"], label), total)


def test_the_loss_sends_no_gradient_to_the_teacher_outputs():
    outputs, label = _outputs()
    outputs["teacher_pred"].requires_grad_()
    for value in outputs["teacher_features"].values():
        value.requires_grad_()
    EMKDLoss()(outputs, label).backward()
    assert outputs["teacher_pred"].grad is None
    assert all(value.grad is None for value in outputs["teacher_features"].values())
    assert outputs["pred"].grad.abs().sum() > 0
    assert all(value.grad.abs().sum() > 0 for value in outputs["student_features"].values())


@pytest.mark.parametrize(
    "kwargs, message",
    [({"pmd_weight": -1}, "non-negative"), ({"temperature": 0}, "positive"), ({"pairs": ["a", "a"]}, "differ")],
)
def test_bad_loss_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EMKDLoss(**kwargs)


def test_pairs_of_the_network_must_be_those_of_the_loss():
    outputs, label = _outputs(pairs=("low", "mid"))
    with pytest.raises(KeyError, match="mid"):
        EMKDLoss()(outputs, label)


def test_term_metrics_average_every_term_but_the_total():
    loss = EMKDLoss(pairs=["a"])
    metrics = term_metrics(loss)
    assert sorted(metrics) == sorted(f"train_{name}" for name in ("main_dice_ce", "pmd", "imd_a", "rad_a"))
    outputs, label = _outputs(pairs=("a",))
    loss(outputs, label)
    metric = metrics["train_pmd"]
    metric.reset()
    metric.update(metric._output_transform(None))
    assert metric.compute() == pytest.approx(loss.latest_terms["pmd"].item())
