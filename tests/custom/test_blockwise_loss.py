"""The blockwise head terms equal the straightforward eq. 4, in value and gradient."""

from __future__ import annotations

import itertools

import pytest
import torch

import custom.blockwise_loss as blockwise_loss
from custom.blockwise_loss import DiceCESettings, KLGroup, blockwise_head_terms
from custom.losses import DSDLoss
from custom.native import native_kernels
from custom.networks import BottleneckHead, DeferredLogits
from tests.helpers import deferred_heads, head_terms, leaves_of, tiny_unetr_dsd

K = 3

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True, params=["native", "torch"])
def block_kernels(request, monkeypatch):
    """Every test runs through the fused CPU kernels and through the PyTorch operators that stand in without them."""
    monkeypatch.setenv("DSD_NATIVE_LOSS", "1" if request.param == "native" else "0")
    if request.param == "native" and native_kernels(torch.float64, torch.device("cpu")) is None:
        pytest.skip("the native kernels do not build here (no C compiler)")
    return request.param

# UNETR's head scales: encoders shallow to deep, decoders deepest first
ISOTROPIC = ((16, 16, 16), [1, 2, 4, 8], [2, 4, 8, 16])
# DynUNet with in-plane-only first downsampling: scales (1,1,1), (2,2,1), (4,4,2), (8,8,4)
ANISOTROPIC = ((16, 16, 8), [(1, 1, 1), (2, 2, 1), (4, 4, 2)], [(2, 2, 1), (4, 4, 2), (8, 8, 4)])


def _grads(total, leaves):
    return torch.autograd.grad(total, leaves, allow_unused=True)


CASES = {
    "dsd": {},
    "ds": {"alpha1": 0.0, "alpha2": 0.0},
    "sdd": {"alpha1": 0.0},
    "sde": {"alpha2": 0.0, "eta": 0.5},
    "detached": {"detach_teacher": True, "tau": 2.0},
    "dice_options": {
        "dice_ce_kwargs": {"include_background": False, "batch": True, "lambda_ce": 0.3, "smooth_nr": 0.0}
    },
}


GEOMETRIES = {"isotropic": ISOTROPIC, "anisotropic": ANISOTROPIC}
# logits per block: one block per item; 64 voxels of 8 heads x 3 classes, more blocks than the coarser heads have
# kernel positions; 64 logits, one voxel a block, every head gathered (slow: only for one case)
BLOCK_SIZES = {"one_block": 64 * 150_000, "64_voxels": 64 * 8 * K, "one_voxel": 64}
# the heads of scale 1 read as many channels as there are classes, or more (encoder1's features: made into logits
# before they are gathered)
FEATURES = {"narrow": K, "wide": 2 * K}
EQ4_SETTINGS = [
    *itertools.product(sorted(CASES), GEOMETRIES, ("one_block", "64_voxels"), ("narrow",)),
    *[("dsd", geometry, "one_voxel", "narrow") for geometry in GEOMETRIES],
    *itertools.product(("dsd", "detached"), GEOMETRIES, ("one_block", "64_voxels"), ("wide",)),
]


@pytest.mark.parametrize(
    "case, geometry, block_size, features", EQ4_SETTINGS, ids=["-".join(s) for s in EQ4_SETTINGS]
)
def test_blockwise_terms_and_gradients_equal_eq4(case, geometry, block_size, features, monkeypatch):
    monkeypatch.setitem(blockwise_loss.BLOCK_ELEMENTS, "cpu", BLOCK_SIZES[block_size])
    spatial, encoder_scales, decoder_scales = GEOMETRIES[geometry]
    encoders = deferred_heads(spatial, encoder_scales, K, features=FEATURES[features])
    decoders = deferred_heads(spatial, decoder_scales, K, seed=1)
    target = torch.randint(0, K, (2, 1, *spatial), generator=torch.Generator().manual_seed(2))
    weights = {"eta": 0.7, "alpha1": 0.5, "alpha2": 0.3, "tau": 3.0}

    kwargs = {**weights, **CASES[case]}
    total, terms = head_terms(DSDLoss(**kwargs), encoders, decoders, target, upsample=False)
    expected_total, expected_terms = head_terms(DSDLoss(**kwargs), encoders, decoders, target, upsample=True)

    for name, value in expected_terms.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-10, atol=1e-12)
    assert sum(float(v) for k, v in expected_terms.items() if k not in ("total", "main_dice_ce")) > 0
    leaves = leaves_of(encoders + decoders)
    for grad, expected in zip(_grads(total, leaves), _grads(expected_total, leaves)):
        if expected is None:
            assert grad is None or not grad.any()
        else:
            torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "spatial_dims, scale, features",
    [
        (3, (16, 16, 16), (2, 5, 1, 2, 1)),
        (3, (4, 2, 1), (2, 5, 3, 4, 5)),
        (3, (1, 1, 1), (1, 5, 3, 3, 3)),
        (2, (6, 4), (2, 5, 3, 5)),
    ],
)
def test_deferred_logits_upsample_like_the_head(spatial_dims, scale, features):
    torch.manual_seed(0)
    head = BottleneckHead(spatial_dims, 5, K, scale).double()
    for conv in head.upsample.values():
        torch.nn.init.normal_(conv.bias)  # position-dependent bias of the composed kernel
    x = torch.randn(*features, dtype=torch.float64)
    deferred = head.defer(x)
    assert deferred.scale == scale
    # a head without upsampling defers its 1x1x1 convolution too: the loss applies it block by block
    assert (deferred.low_res is x) == (scale == (1,) * spatial_dims)
    torch.testing.assert_close(deferred.upsample(), head(x), rtol=1e-12, atol=1e-12)


def test_digit_order_round_trip():
    levels, coarse = [(2, 2, 1), (3, 1, 2)], (2, 3, 1)
    x = torch.arange(2 * 3 * 12 * 6 * 2, dtype=torch.float64).view(2, 3, 12, 6, 2)  # coarse * levels per axis
    ordered = blockwise_loss._digits_first(x, levels, coarse)
    assert ordered.shape == (2, 3, 12 * 6 * 2)
    assert torch.equal(blockwise_loss._digits_last(ordered, levels, coarse), x)
    # along one axis x = d0 + 2 * coarse; the finest digit d0 is the most significant in the order
    line = torch.arange(4.0).view(1, 1, 4, 1, 1)
    assert blockwise_loss._digits_first(line, [(2, 1, 1)], (2, 1, 1)).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]


def test_deferred_network_trains_like_the_full_resolution_one():
    """A whole training step in float64: loss terms and every parameter's gradient agree."""
    image = torch.randn(2, 1, 16, 16, 16, dtype=torch.float64)
    label = torch.randint(0, K, (2, 1, 16, 16, 16))
    results = []
    for defer in (False, True):
        net = tiny_unetr_dsd(K, defer).double().train()
        loss = DSDLoss()
        outputs = net(image)
        assert all(isinstance(h, DeferredLogits) == defer for h in outputs["encoder"] + outputs["decoder"])
        loss(outputs, label).backward()
        results.append((loss.latest_terms, {n: p.grad for n, p in net.named_parameters()}))
    (terms, grads), (deferred_terms, deferred_grads) = results
    for name in terms:
        torch.testing.assert_close(deferred_terms[name], terms[name], rtol=1e-10, atol=1e-12)
    assert grads.keys() == deferred_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(deferred_grads[name], grad, rtol=1e-8, atol=1e-12, msg=name)


def test_float32_loss_equals_reference_to_1e5():
    image = torch.randn(2, 1, 16, 16, 16)
    label = torch.randint(0, K, (2, 1, 16, 16, 16))
    values = []
    for defer in (False, True):
        loss = DSDLoss()
        loss(tiny_unetr_dsd(K, defer).train()(image), label)
        values.append(loss.latest_terms)
    for name, value in values[0].items():
        torch.testing.assert_close(values[1][name], value, rtol=1e-5, atol=1e-6)


def test_eval_mode_is_the_bare_backbone():
    net = tiny_unetr_dsd(K, True).eval()
    image = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(image), net.backbone(image))


def test_scales_without_shared_order_fall_back_to_full_resolution():
    spatial = (4, 4, 4)
    heads = deferred_heads(spatial, [(2, 1, 1), (1, 2, 1)], K)  # neither scale is a step of the other's
    target = torch.randint(0, K, (2, 1, *spatial))
    settings = DiceCESettings()
    assert blockwise_head_terms(heads, target, [0, 1], [KLGroup(0, (1,))], 3.0, False, settings) is None
    total, terms = head_terms(DSDLoss(), heads[:1], heads, target, upsample=False)
    expected_total, expected_terms = head_terms(DSDLoss(), heads[:1], heads, target, upsample=True)
    torch.testing.assert_close(total, expected_total)


@pytest.mark.parametrize(
    "kwargs, reproduced",
    [
        ({}, True),
        ({"include_background": False, "batch": True, "lambda_dice": 0.5, "smooth_dr": 1e-3}, True),
        ({"to_onehot_y": True, "softmax": True, "weight": None}, True),
        ({"squared_pred": True}, False),
        ({"jaccard": True}, False),
        ({"weight": torch.ones(K, dtype=torch.float64)}, False),
        ({"label_smoothing": 0.1}, False),
        ({"sigmoid": True, "softmax": False}, False),
    ],
)
def test_dice_ce_options_reproduced_or_computed_at_full_resolution(kwargs, reproduced):
    assert (DiceCESettings.from_kwargs(kwargs) is not None) == reproduced
    spatial, encoder_scales, decoder_scales = ISOTROPIC
    encoders, decoders = deferred_heads(spatial, encoder_scales, K), deferred_heads(spatial, decoder_scales, K, seed=1)
    target = torch.randint(0, K, (2, 1, *spatial))
    if kwargs.get("sigmoid"):
        return  # a sigmoid DiceCE wants one-hot labels; its reproduction is what matters here
    total, _ = head_terms(DSDLoss(dice_ce_kwargs=kwargs), encoders, decoders, target, upsample=False)
    expected, _ = head_terms(DSDLoss(dice_ce_kwargs=kwargs), encoders, decoders, target, upsample=True)
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-12)


def test_half_precision_heads_are_computed_in_float32():
    spatial, encoder_scales, decoder_scales = ISOTROPIC
    heads = deferred_heads(spatial, encoder_scales + decoder_scales, K, dtype=torch.bfloat16)
    target = torch.randint(0, K, (2, 1, *spatial))
    terms = blockwise_head_terms(heads, target, [4, 5], [KLGroup(3, (0, 1, 2))], 3.0, False, DiceCESettings())
    assert all(t.dtype == torch.float32 for t in terms)
    sum(terms).backward()
    assert all(t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad.float()).all() for t in leaves_of(heads[:6]))


def test_second_backward_is_refused():
    spatial, encoder_scales, _ = ISOTROPIC
    heads = deferred_heads(spatial, encoder_scales, K)
    target = torch.randint(0, K, (2, 1, *spatial))
    total = sum(blockwise_head_terms(heads, target, [0], [KLGroup(3, (0, 1, 2))], 3.0, False, DiceCESettings()))
    total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="a second time"):
        total.backward()


@pytest.mark.parametrize(
    "target_shape, match", [((2, 1, 16, 16, 8), "upsamples to batch 2 and size"), ((2, 3, 16, 16, 16), "one channel")]
)
def test_mismatched_labels_are_named(target_shape, match):
    spatial, encoder_scales, _ = ISOTROPIC
    heads = deferred_heads(spatial, encoder_scales, K)
    with pytest.raises(ValueError, match=match):
        blockwise_head_terms(heads, torch.zeros(target_shape, dtype=torch.long), [0], [], 3.0, False, DiceCESettings())


def test_a_head_in_two_groups_is_refused():
    spatial, encoder_scales, _ = ISOTROPIC
    heads = deferred_heads(spatial, encoder_scales, K)
    target = torch.randint(0, K, (2, 1, *spatial))
    groups = [KLGroup(3, (0, 1)), KLGroup(2, (1,))]
    with pytest.raises(ValueError, match="one distillation group"):
        blockwise_head_terms(heads, target, [0], groups, 3.0, False, DiceCESettings())


def test_identical_twice_with_deterministic_algorithms(monkeypatch):
    monkeypatch.setitem(blockwise_loss.BLOCK_ELEMENTS, "cpu", BLOCK_SIZES["64_voxels"])  # gathered heads, many blocks
    spatial, encoder_scales, decoder_scales = ISOTROPIC
    target = torch.randint(0, K, (2, 1, *spatial))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            encoders = deferred_heads(spatial, encoder_scales, K, dtype=torch.float32)
            decoders = deferred_heads(spatial, decoder_scales, K, dtype=torch.float32, seed=1)
            total, terms = head_terms(DSDLoss(), encoders, decoders, target, upsample=False)
            runs.append((terms, _grads(total, leaves_of(encoders + decoders))))
    finally:
        torch.use_deterministic_algorithms(previous)
    (terms, grads), (terms_again, grads_again) = runs
    assert all(torch.equal(terms[name], terms_again[name]) for name in terms)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_again))


@pytest.mark.parametrize("block_size", ["one_block", "64_voxels"])
def test_input_gradients_are_tensors_of_their_own(block_size, monkeypatch):
    """No returned gradient is a view, so autograd adds a backbone's gradient of the same features into it in place."""
    monkeypatch.setitem(blockwise_loss.BLOCK_ELEMENTS, "cpu", BLOCK_SIZES[block_size])  # ordered, then gathered heads
    spatial, encoder_scales, decoder_scales = ISOTROPIC
    heads = deferred_heads(spatial, encoder_scales + decoder_scales, K)
    target = torch.randint(0, K, (2, 1, *spatial))
    terms = blockwise_head_terms(heads, target, [4, 5], [KLGroup(3, (0, 1, 2))], 3.0, False, DiceCESettings())
    returned = []
    terms[0].grad_fn.register_hook(lambda grad_inputs, grad_outputs: returned.extend(grad_inputs))
    sum(terms).backward()
    low_res = [grad for grad in returned[-3 * len(heads) :: 3] if grad is not None]  # (low_res, weight, bias) a head
    assert [grad.shape for grad in low_res] == [head.low_res.shape for head in heads[:6]]
    assert all(grad._base is None and grad.is_contiguous() for grad in low_res)


@pytest.mark.parametrize("voxels", [6, 4096 * 3, 4096 * 8, 4096 * 4 + 2])
def test_kernel_gradient_products_equal_one_matmul(voxels):
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(5, voxels, dtype=torch.float64, generator=generator)
    inputs = torch.randn(4, 2 * voxels, dtype=torch.float64, generator=generator)[:, 1::2]  # strided like a slice
    out = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    expected = out.addmm(grad, inputs.t(), alpha=-0.5)
    blockwise_loss._add_products(out, grad, inputs, -0.5)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
