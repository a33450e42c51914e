from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from custom.definitions import ABLATIONS, TERM_NAMES, ablation_weights
from custom.losses import DSDLoss, distillation_kl
from custom.networks import DeferredLogits

K = 3
SPATIAL = (6, 5, 4)


pytestmark = pytest.mark.usefixtures("single_thread")


def _outputs(z: int = 3, batch: int = 2, seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)

    def logits():
        return (2 * torch.randn(batch, K, *SPATIAL, generator=g)).requires_grad_(requires_grad)

    outputs = {"pred": logits(), "encoder": [logits() for _ in range(z)], "decoder": [logits() for _ in range(z)]}
    target = torch.randint(0, K, (batch, 1, *SPATIAL), generator=g)
    return outputs, target


def _reference_kl(student, teacher, tau):
    p_s = torch.softmax(student / tau, dim=1)
    p_t = torch.softmax(teacher / tau, dim=1)
    return (p_t * (torch.log(p_t) - torch.log(p_s))).sum(1).mean() * tau**2


def _dice_ce(pred, target):
    return DiceCELoss(include_background=True, to_onehot_y=True, softmax=True)(pred, target)


@pytest.mark.parametrize("with_heads", [True, False])
def test_basic_preset_equals_plain_dice_ce(with_heads):
    outputs, target = _outputs()
    loss_fn = DSDLoss.from_ablation("Basic")
    loss = loss_fn(outputs if with_heads else outputs["pred"], target)
    assert torch.equal(loss, _dice_ce(outputs["pred"], target))
    assert torch.equal(loss_fn.latest_terms["main_dice_ce"], loss)
    for name in ("deep_supervision", "kl_encoder", "kl_decoder"):
        assert loss_fn.latest_terms[name] == 0


@pytest.mark.parametrize("ablation", ["DS", "SDD", "SDE", "DSD"])
def test_plain_tensor_gives_dice_ce_only(ablation):
    outputs, target = _outputs()
    loss_fn = DSDLoss.from_ablation(ablation)
    loss = loss_fn(outputs["pred"], target)
    assert torch.equal(loss, _dice_ce(outputs["pred"], target))
    assert {k: float(v) for k, v in loss_fn.latest_terms.items() if k not in ("total", "main_dice_ce")} == {
        "deep_supervision": 0.0,
        "kl_encoder": 0.0,
        "kl_decoder": 0.0,
        "encoder_supervision": 0.0,
    }


@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("z", [2, 4])
def test_total_matches_reference_formula(tau, z):
    """L = DiceCE(Y) + eta*sum_i DiceCE(D_i) + a1*sum_{i<Z} KL(E_Z->E_i) + a2*sum_{i>1} KL(D_1->D_i)."""
    outputs, target = _outputs(z=z)
    eta, alpha1, alpha2 = 0.3, 0.5, 0.7
    loss_fn = DSDLoss(eta=eta, alpha1=alpha1, alpha2=alpha2, tau=tau)
    loss = loss_fn(outputs, target)
    enc, dec = outputs["encoder"], outputs["decoder"]
    main = _dice_ce(outputs["pred"], target)
    ds = sum(_dice_ce(d, target) for d in dec)
    kl_e = sum(_reference_kl(e, enc[-1], tau) for e in enc[:-1])
    kl_d = sum(_reference_kl(d, dec[0], tau) for d in dec[1:])
    expected = {"main_dice_ce": main, "deep_supervision": ds, "kl_encoder": kl_e, "kl_decoder": kl_d}
    for name, value in expected.items():
        torch.testing.assert_close(loss_fn.latest_terms[name], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, main + eta * ds + alpha1 * kl_e + alpha2 * kl_d, rtol=1e-5, atol=1e-6)
    assert all(float(v) > 0 for v in expected.values())


@pytest.mark.parametrize("detach_teacher", [False, True])
@pytest.mark.parametrize("z", [2, 4])
def test_gradients_match_reference_formula(detach_teacher, z):
    """The one-pass distillation sums give the gradients of the term-by-term eq. 4."""
    outputs, target = _outputs(z=z, requires_grad=True)
    eta, alpha1, alpha2, tau = 0.3, 0.5, 0.7, 3.0
    DSDLoss(eta, alpha1, alpha2, tau, detach_teacher=detach_teacher)(outputs, target).backward()
    leaves = [outputs["pred"], *outputs["encoder"], *outputs["decoder"]]
    grads = [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad.clone() for leaf in leaves]

    reference_outputs, _ = _outputs(z=z, requires_grad=True)
    enc, dec = reference_outputs["encoder"], reference_outputs["decoder"]

    def teacher(logits):
        return logits.detach() if detach_teacher else logits

    reference = (
        _dice_ce(reference_outputs["pred"], target)
        + eta * sum(_dice_ce(d, target) for d in dec)
        + alpha1 * sum(_reference_kl(e, teacher(enc[-1]), tau) for e in enc[:-1])
        + alpha2 * sum(_reference_kl(d, teacher(dec[0]), tau) for d in dec[1:])
    )
    reference.backward()
    reference_leaves = [reference_outputs["pred"], *enc, *dec]
    for grad, leaf in zip(grads, reference_leaves):
        expected = leaf.grad if leaf.grad is not None else torch.zeros_like(grad)
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "weight, term",
    [
        ("eta", "deep_supervision"),
        ("alpha1", "kl_encoder"),
        ("alpha2", "kl_decoder"),
        ("eta_encoder", "encoder_supervision"),
    ],
)
def test_each_weight_scales_only_its_term(weight, term):
    outputs, target = _outputs()
    base = {"eta": 0.3, "alpha1": 0.5, "alpha2": 0.7, "eta_encoder": 0.4}
    w = base[weight]
    one = DSDLoss(**base)
    two = DSDLoss(**{**base, weight: 2 * w})
    loss_one, loss_two = one(outputs, target), two(outputs, target)
    for name in TERM_NAMES[1:]:  # every term is the same, whatever the weights
        assert torch.equal(one.latest_terms[name], two.latest_terms[name]), name
    torch.testing.assert_close(loss_two - loss_one, w * one.latest_terms[term], rtol=1e-5, atol=1e-6)
    # zero weight removes exactly that term
    zero = DSDLoss(**{**base, weight: 0.0})
    loss_zero = zero(outputs, target)
    assert zero.latest_terms[term] == 0
    torch.testing.assert_close(loss_one - loss_zero, w * one.latest_terms[term], rtol=1e-5, atol=1e-6)


def test_encoder_supervision_goes_beyond_the_paper_only_when_asked():
    outputs, target = _outputs()
    assert DSDLoss().eta_encoder == 0.0 and not DSDLoss.from_ablation("DS").uses_encoder_heads
    loss_fn = DSDLoss(eta=0.0, alpha1=0.0, alpha2=0.0, eta_encoder=0.5)
    loss = loss_fn(outputs, target)
    expected = sum(_dice_ce(e, target) for e in outputs["encoder"])
    torch.testing.assert_close(loss_fn.latest_terms["encoder_supervision"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, _dice_ce(outputs["pred"], target) + 0.5 * expected, rtol=1e-5, atol=1e-6)
    assert loss_fn.uses_encoder_heads and not loss_fn.uses_decoder_heads
    with pytest.raises(ValueError, match="eta_encoder=-1"):
        DSDLoss(eta_encoder=-1)


def test_encoder_supervision_of_deferred_heads_equals_full_resolution():
    g = torch.Generator().manual_seed(4)
    spatial = (8, 8, 8)
    heads = []
    for scale in (1, 2, 4):
        low = 2 * torch.randn(2, K, *(n // scale for n in spatial), generator=g, dtype=torch.float64)
        kernel = torch.randn(K, K, scale, scale, scale, generator=g, dtype=torch.float64) / 2
        bias = torch.randn(K, scale, scale, scale, generator=g, dtype=torch.float64) / 2
        heads.append(DeferredLogits(low.requires_grad_(), kernel.requires_grad_(), bias.requires_grad_()))
    target = torch.randint(0, K, (2, 1, *spatial), generator=g)
    pred = torch.zeros(2, K, *spatial, dtype=torch.float64)
    loss_fn = DSDLoss(eta=0.0, alpha1=0.7, alpha2=0.0, eta_encoder=0.5)
    leaves = [t for head in heads for t in head]
    results = []
    for encoders in (heads, [head.upsample() for head in heads]):
        total = loss_fn({"pred": pred, "encoder": encoders, "decoder": []}, target)
        results.append((dict(loss_fn.latest_terms), torch.autograd.grad(total, leaves)))
    (blockwise, blockwise_grads), (reference, reference_grads) = results
    for name in TERM_NAMES:
        torch.testing.assert_close(blockwise[name], reference[name], rtol=1e-10, atol=1e-12)
    for grad, expected in zip(blockwise_grads, reference_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("shape", [(2, K, 4, 4, 4), (3, 2, 5, 7), (1, 4, 9)])
def test_distillation_kl_matches_reference(tau, shape):
    g = torch.Generator().manual_seed(1)
    student, teacher = 3 * torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)
    value = distillation_kl(student, teacher, tau)
    assert value.shape == ()
    torch.testing.assert_close(value, _reference_kl(student, teacher, tau), rtol=1e-6, atol=1e-6)
    assert value > 0


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_distillation_kl_zero_iff_same(tau):
    logits = torch.randn(2, K, 4, 4, 4)
    assert distillation_kl(logits, logits.clone(), tau) == 0
    # a constant shift per voxel leaves the softmax unchanged
    torch.testing.assert_close(distillation_kl(logits + 5.0, logits, tau), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert distillation_kl(logits, torch.randn(2, K, 4, 4, 4), tau) > 0


def test_distillation_kl_direction_and_temperature():
    """KL(teacher || student) is not symmetric; tau^2 rescales the softened KL."""
    g = torch.Generator().manual_seed(2)
    a, b = 3 * torch.randn(2, K, 8, generator=g), 3 * torch.randn(2, K, 8, generator=g)
    assert not torch.allclose(distillation_kl(a, b, 1.0), distillation_kl(b, a, 1.0))
    torch.testing.assert_close(distillation_kl(a, b, 1.0), _reference_kl(a, b, 1.0))
    softened = distillation_kl(2 * a, 2 * b, 2.0)  # logits/tau unchanged -> only the tau^2 factor differs
    torch.testing.assert_close(softened, 4 * distillation_kl(a, b, 1.0), rtol=1e-5, atol=1e-6)


def test_kl_terms_zero_when_all_heads_agree():
    outputs, target = _outputs()
    same = outputs["encoder"][0]
    outputs["encoder"] = [same.clone() for _ in range(3)]
    outputs["decoder"] = [same.clone() for _ in range(3)]
    loss_fn = DSDLoss(tau=3.0)
    loss_fn(outputs, target)
    assert loss_fn.latest_terms["kl_encoder"] == 0
    assert loss_fn.latest_terms["kl_decoder"] == 0


@pytest.mark.parametrize("changed", [0, 1, 2])
def test_encoder_teacher_is_last(changed):
    """All encoder logits equal T except one: the KL term identifies who teaches whom."""
    outputs, target = _outputs()
    teacher, other = outputs["encoder"][0], outputs["encoder"][1]
    outputs["encoder"] = [teacher.clone() for _ in range(3)]
    outputs["encoder"][changed] = other
    loss_fn = DSDLoss(eta=0.0, alpha1=1.0, alpha2=0.0, tau=2.0)
    loss_fn(outputs, target)
    if changed == 2:  # the teacher E_Z differs: both students are pulled towards it
        expected = 2 * distillation_kl(teacher, other, 2.0)
    else:  # one student differs from the teacher E_Z
        expected = distillation_kl(other, teacher, 2.0)
    torch.testing.assert_close(loss_fn.latest_terms["kl_encoder"], expected, rtol=1e-6, atol=1e-7)
    assert loss_fn.latest_terms["kl_decoder"] == 0


@pytest.mark.parametrize("changed", [0, 1, 2])
def test_decoder_teacher_is_first(changed):
    outputs, target = _outputs()
    teacher, other = outputs["decoder"][0], outputs["decoder"][1]
    outputs["decoder"] = [teacher.clone() for _ in range(3)]
    outputs["decoder"][changed] = other
    loss_fn = DSDLoss(eta=0.0, alpha1=0.0, alpha2=1.0, tau=2.0)
    loss_fn(outputs, target)
    if changed == 0:  # the teacher D_1 differs: both students are pulled towards it
        expected = 2 * distillation_kl(teacher, other, 2.0)
    else:
        expected = distillation_kl(other, teacher, 2.0)
    torch.testing.assert_close(loss_fn.latest_terms["kl_decoder"], expected, rtol=1e-6, atol=1e-7)
    assert loss_fn.latest_terms["kl_encoder"] == 0


def test_main_output_takes_no_part_in_distillation():
    outputs, target = _outputs()
    loss_fn = DSDLoss()
    loss_fn(outputs, target)
    terms = dict(loss_fn.latest_terms)
    outputs["pred"] = outputs["pred"] + torch.randn_like(outputs["pred"])
    loss_fn(outputs, target)
    for name in ("deep_supervision", "kl_encoder", "kl_decoder"):
        assert torch.equal(loss_fn.latest_terms[name], terms[name])
    assert not torch.equal(loss_fn.latest_terms["main_dice_ce"], terms["main_dice_ce"])


@pytest.mark.parametrize("detach_teacher", [False, True])
@pytest.mark.parametrize("branch", ["encoder", "decoder"])
def test_detach_teacher_switch(detach_teacher, branch):
    outputs, target = _outputs(requires_grad=True)
    weights = {"eta": 0.0, "alpha1": 1.0 if branch == "encoder" else 0.0, "alpha2": 1.0 if branch == "decoder" else 0.0}
    loss_fn = DSDLoss(**weights, tau=3.0, detach_teacher=detach_teacher)
    loss_fn(outputs, target).backward()
    logits = outputs[branch]
    teacher_index = -1 if branch == "encoder" else 0
    teacher = logits[teacher_index]
    students = [t for i, t in enumerate(logits) if i != teacher_index % len(logits)]
    for s in students:
        assert s.grad is not None and s.grad.abs().sum() > 0
    if detach_teacher:
        assert teacher.grad is None or not teacher.grad.any()
    else:
        assert teacher.grad is not None and teacher.grad.abs().sum() > 0
    other = "decoder" if branch == "encoder" else "encoder"
    assert all(t.grad is None for t in outputs[other])  # eta=0 and the other alpha is 0
    assert outputs["pred"].grad is not None


def test_detach_does_not_change_the_value():
    outputs, target = _outputs()
    assert torch.equal(DSDLoss(detach_teacher=True)(outputs, target), DSDLoss(detach_teacher=False)(outputs, target))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Basic", (0.0, 0.0, 0.0)),
        ("basic", (0.0, 0.0, 0.0)),
        ("DS", (1.0, 0.0, 0.0)),
        ("ds", (1.0, 0.0, 0.0)),
        ("SDD", (1.0, 0.0, 1.0)),
        ("SDE", (1.0, 1.0, 0.0)),
        ("DSD", (1.0, 1.0, 1.0)),
        ("dSd", (1.0, 1.0, 1.0)),
    ],
)
def test_ablation_presets(name, expected):
    weights = ablation_weights(name)
    assert weights == dict(zip(("eta", "alpha1", "alpha2"), expected))
    loss_fn = DSDLoss.from_ablation(name, tau=2.5, detach_teacher=True)
    assert (loss_fn.eta, loss_fn.alpha1, loss_fn.alpha2) == expected
    assert loss_fn.tau == 2.5 and loss_fn.detach_teacher is True


def test_ablation_table_is_not_mutated_through_weights():
    weights = ablation_weights("DSD")
    weights["eta"] = 42.0
    assert ABLATIONS["dsd"]["eta"] == 1.0
    assert set(ABLATIONS) == {"basic", "ds", "sdd", "sde", "dsd"}


@pytest.mark.parametrize("name", ["DSX", "", "deep", "DSD "])
def test_unknown_ablation_raises(name):
    with pytest.raises(ValueError, match="Unknown ablation"):
        ablation_weights(name)
    with pytest.raises(ValueError):
        DSDLoss.from_ablation(name)


@pytest.mark.parametrize(
    "kwargs",
    [{"eta": -1.0}, {"alpha1": -0.1}, {"alpha2": -1e-6}, {"tau": 0.0}, {"tau": -2.0}],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        DSDLoss(**kwargs)


@pytest.mark.parametrize("ablation", ["Basic", "DSD"])
def test_latest_terms_keys_and_detached(ablation):
    outputs, target = _outputs(requires_grad=True)
    loss_fn = DSDLoss.from_ablation(ablation)
    assert loss_fn.latest_terms == {}
    loss = loss_fn(outputs, target)
    assert loss.requires_grad
    assert tuple(loss_fn.latest_terms) == TERM_NAMES
    for value in loss_fn.latest_terms.values():
        assert isinstance(value, torch.Tensor) and value.shape == () and not value.requires_grad
        assert value.grad_fn is None
    assert torch.equal(loss_fn.latest_terms["total"], loss.detach())


def test_dice_ce_kwargs_are_forwarded():
    outputs, target = _outputs()
    loss_fn = DSDLoss.from_ablation("Basic", dice_ce_kwargs={"include_background": False, "lambda_ce": 0.0})
    plain = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, lambda_ce=0.0)
    expected = plain(outputs["pred"], target)
    assert torch.equal(loss_fn(outputs, target), expected)
