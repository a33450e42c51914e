from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import UNETR, BasicUNet

from custom.losses import DSDLoss
from custom.networks import BottleneckHead, DSDNet, parse_tap, upsampling_steps

K = 3  # classes

UNETR_ENCODER_TAPS = ["encoder1", "encoder2", "encoder3", "encoder4"]
UNETR_DECODER_TAPS = ["decoder3", "decoder4", "decoder5", "decoder5:input"]


class TinyUNet(nn.Module):
    """A hand-written 3-level U-net with BatchNorm, unknown to MONAI."""

    def __init__(self, in_channels: int = 1, out_channels: int = K, c: int = 4) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv3d(in_channels, c, 3, padding=1), nn.BatchNorm3d(c), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv3d(c, 2 * c, 2, stride=2), nn.BatchNorm3d(2 * c), nn.ReLU())
        self.enc3 = nn.Sequential(nn.Conv3d(2 * c, 4 * c, 2, stride=2), nn.BatchNorm3d(4 * c), nn.ReLU())
        self.up2 = nn.ConvTranspose3d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv3d(4 * c, 2 * c, 3, padding=1), nn.BatchNorm3d(2 * c), nn.ReLU())
        self.up1 = nn.ConvTranspose3d(2 * c, c, 2, stride=2)
        self.dec1 = nn.Sequential(nn.Conv3d(2 * c, c, 3, padding=1), nn.ReLU())
        self.out = nn.Conv3d(c, out_channels, 1)
        self.unused = nn.Conv3d(c, c, 1)  # never called in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


# encoder taps shallow->deep, decoder taps deepest decoder (teacher) first; dotted names reach nested modules
TINY_ENCODER_TAPS = ["enc1", "enc2", "enc3"]
TINY_DECODER_TAPS = ["dec2.2", "up2:input"]


def _unetr(feature_size: int = 4, img: int = 16, k: int = K) -> UNETR:
    return UNETR(
        in_channels=1,
        out_channels=k,
        img_size=img,
        feature_size=feature_size,
        hidden_size=48,
        mlp_dim=96,
        num_heads=4,
        proj_type="perceptron",
    )


def _basic_unet() -> BasicUNet:
    return BasicUNet(spatial_dims=3, in_channels=1, out_channels=K, features=(4, 4, 8, 8, 16, 4), norm="batch")


# name -> (backbone factory, encoder taps, decoder taps, roi, encoder tap sizes, decoder tap sizes)
CASES = {
    # img_size 16 keeps the test fast: one ViT token, so "decoder5:input" is a 1x1x1 map (scale 16)
    "unetr": (_unetr, UNETR_ENCODER_TAPS, UNETR_DECODER_TAPS, (16, 16, 16), [16, 8, 4, 2], [8, 4, 2, 1]),
    "tiny": (TinyUNet, TINY_ENCODER_TAPS, TINY_DECODER_TAPS, (8, 8, 8), [8, 4, 2], [4, 2]),
    "basic_unet": (
        _basic_unet,
        ["conv_0", "down_1", "down_2", "down_3"],
        ["upcat_2", "upcat_3", "upcat_4", "upcat_4:input"],
        (16, 16, 16),
        [16, 8, 4, 2],
        [8, 4, 2, 1],
    ),
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _build(case: str, seed: int = 0):
    factory, enc, dec, roi, _, _ = CASES[case]
    torch.manual_seed(seed)
    backbone = factory()
    net = DSDNet(backbone, encoder_taps=enc, decoder_taps=dec, num_classes=K, in_channels=1, roi_size=roi)
    return net, backbone, roi


def _key(tap: str) -> str:
    """Name of a tap's head in ``DSDNet.heads`` (ModuleDict keys may hold neither "." nor ":")."""
    return tap.replace(".", "_").replace(":", "_")


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize(
    "tap, expected",
    [
        ("decoder3", ("decoder3", False)),
        ("decoder5:input", ("decoder5", True)),
        ("vit.blocks.11", ("vit.blocks.11", False)),
    ],
)
def test_parse_tap(tap, expected):
    assert parse_tap(tap) == expected


@pytest.mark.parametrize(
    "scale, expected",
    [
        ((1, 1, 1), []),
        ((8, 8, 8), [(2, 2, 2)] * 3),
        ((4, 4, 1), [(2, 2, 1)] * 2),
        ((6, 6, 6), [(2, 2, 2), (3, 3, 3)]),
        ((2, 1), [(2, 1)]),
        ((12, 3, 1), [(2, 1, 1), (2, 1, 1), (3, 3, 1)]),
    ],
)
def test_upsampling_steps(scale, expected):
    steps = upsampling_steps(scale)
    assert steps == expected
    for axis, factor in enumerate(scale):  # the steps multiply back to the scale on every axis
        assert torch.tensor([s[axis] for s in steps], dtype=torch.long).prod().item() == factor


@pytest.mark.parametrize(
    "channels, classes, scale, in_spatial, expected_params",
    [
        (32, 3, (8, 8, 8), (2, 2, 2), 32 * 3 + 3 + 3 * 3 * 8 + 3),  # one shared x2 kernel
        (5, 2, (6, 6, 6), (1, 2, 1), 5 * 2 + 2 + (2 * 2 * 8 + 2) + (2 * 2 * 27 + 2)),
        (4, 3, (4, 4, 1), (2, 3, 5), 4 * 3 + 3 + 3 * 3 * 4 + 3),
        (6, 2, (1, 1, 1), (3, 3, 3), 6 * 2 + 2),
    ],
)
def test_bottleneck_head(channels, classes, scale, in_spatial, expected_params):
    head = BottleneckHead(3, channels, classes, scale)
    assert _n_params(head) == expected_params
    out = head(torch.randn(2, channels, *in_spatial))
    assert out.shape == (2, classes, *(s * f for s, f in zip(in_spatial, scale)))


@pytest.mark.parametrize("case", list(CASES))
def test_training_output_shapes_and_order(case):
    net, backbone, roi = _build(case)
    _, enc, dec, _, enc_sizes, dec_sizes = CASES[case]
    # heads follow the tap order: E_1..E_Z shallow to deep, D_1..D_Z as given
    heads = dict(net.heads.items())
    assert [h.steps for h in (heads[_key(t)] for t in enc)] == [
        upsampling_steps([roi[0] // s] * 3) for s in enc_sizes
    ]
    assert [h.steps for h in (heads[_key(t)] for t in dec)] == [
        upsampling_steps([roi[0] // s] * 3) for s in dec_sizes
    ]
    net.train()
    x = torch.randn(2, 1, *roi)
    out = net(x)
    assert set(out) == {"pred", "encoder", "decoder"}
    assert out["pred"].shape == (2, K, *roi)
    assert len(out["encoder"]) == len(enc) and len(out["decoder"]) == len(dec)
    for logits in out["encoder"] + out["decoder"]:
        assert logits.shape == (2, K, *roi)


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_follow_tap_order(case):
    """Each returned logit map is the head of the matching tap applied to that tap's feature map."""
    net, backbone, roi = _build(case)
    _, enc, dec, _, _, _ = CASES[case]
    modules = dict(backbone.named_modules())
    captured, handles = {}, []
    for tap in enc + dec:
        name, is_input = parse_tap(tap)
        if is_input:
            handles.append(modules[name].register_forward_pre_hook(lambda m, a, t=tap: captured.__setitem__(t, a[0])))
        else:
            handles.append(modules[name].register_forward_hook(lambda m, a, o, t=tap: captured.__setitem__(t, o)))
    net.train()
    out = net(torch.randn(2, 1, *roi))  # batch 2: BatchNorm needs more than one value per channel
    for h in handles:
        h.remove()
    for key, taps in (("encoder", enc), ("decoder", dec)):
        for logits, tap in zip(out[key], taps):
            head = net.heads[_key(tap)]
            torch.testing.assert_close(logits, head(captured[tap]), rtol=0, atol=0)


def test_input_tap_reads_module_input():
    roi = (32, 32, 32)
    backbone = _unetr(img=32)
    net = DSDNet(backbone, UNETR_ENCODER_TAPS, UNETR_DECODER_TAPS, num_classes=K, in_channels=1, roi_size=roi)
    captured = {}
    handle = backbone.decoder5.register_forward_pre_hook(lambda m, args: captured.__setitem__("in", args[0]))
    out_handle = backbone.decoder5.register_forward_hook(lambda m, a, o: captured.__setitem__("out", o))
    head_in = {}
    head_handle = net.heads["decoder5_input"].register_forward_pre_hook(lambda m, a: head_in.__setitem__("x", a[0]))
    try:
        net.train()
        net(torch.randn(1, 1, *roi))
    finally:
        handle.remove(), out_handle.remove(), head_handle.remove()
    assert head_in["x"] is captured["in"]
    assert head_in["x"].shape == (1, 48, 2, 2, 2)  # the ViT feature map: hidden_size channels at roi / 16
    assert captured["out"].shape != captured["in"].shape


@pytest.mark.parametrize("case", list(CASES))
def test_eval_output_is_backbone_output_and_heads_do_not_run(case):
    net, backbone, roi = _build(case)
    calls = []
    for head in net.heads.values():
        head.register_forward_pre_hook(lambda m, a: calls.append(m))
        for sub in head.modules():
            sub.register_forward_hook(lambda m, a, o: calls.append(m))
    net.eval()
    assert not backbone.training
    x = torch.randn(2, 1, *roi)
    with torch.no_grad():
        out = net(x)
        expected = backbone(x)
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, expected)
    assert calls == []
    net.train()  # sanity check of the hook mechanism: in training mode every head runs
    net(x)
    assert len(calls) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_roundtrip_into_bare_backbone(case):
    net, backbone, roi = _build(case, seed=0)
    factory = CASES[case][0]
    net.train()
    x = torch.randn(2, 1, *roi)
    for p in net.parameters():  # move away from initialisation so a silent non-load would show
        p.data.add_(0.01 * torch.randn_like(p))
    net(x)  # update BatchNorm running statistics
    state = net.backbone.state_dict()
    assert not [k for k in state if "head" in k]
    torch.manual_seed(123)
    fresh = factory()
    assert set(state) == set(fresh.state_dict())
    fresh.load_state_dict(state, strict=True)
    net.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(net(x), fresh(x))
    # the wrapper's own state dict is the backbone's, prefixed, plus the heads
    keys = set(net.state_dict())
    assert keys == {f"backbone.{k}" for k in state} | {f"heads.{k}" for k in net.heads.state_dict()}


@pytest.mark.parametrize("case", list(CASES))
def test_training_pred_equals_bare_backbone(case):
    """The hooks read features but never change the backbone's computation."""
    net, backbone, roi = _build(case)
    factory = CASES[case][0]
    fresh = factory()
    fresh.load_state_dict(backbone.state_dict(), strict=True)
    net.train()
    fresh.train()
    x = torch.randn(2, 1, *roi)
    assert torch.equal(net(x)["pred"], fresh(x))


@pytest.mark.parametrize("case", list(CASES))
def test_extra_parameters_are_exactly_the_heads(case):
    factory = CASES[case][0]
    torch.manual_seed(0)
    bare_count = _n_params(factory())
    net, backbone, _ = _build(case)
    assert _n_params(backbone) == bare_count
    assert _n_params(net) - _n_params(backbone) == _n_params(net.heads)
    assert {id(p) for p in net.parameters()} == {id(p) for p in backbone.parameters()} | {
        id(p) for p in net.heads.parameters()
    }
    assert len(net.heads) == len(CASES[case][1]) + len(CASES[case][2])


@pytest.mark.parametrize("feature_size, classes", [(4, 3), (8, 2)])
def test_unetr_head_parameter_counts(feature_size, classes):
    backbone = _unetr(feature_size=feature_size, img=16, k=classes)
    net = DSDNet(
        backbone, UNETR_ENCODER_TAPS, UNETR_DECODER_TAPS, num_classes=classes, in_channels=1, roi_size=(16, 16, 16)
    )
    f, k = feature_size, classes
    x2 = k * k * 8 + k  # the shared 2x2x2 transposed convolution
    expected = {
        "encoder1": f * k + k,  # full resolution: 1x1x1 conv only
        "encoder2": 2 * f * k + k + x2,
        "encoder3": 4 * f * k + k + x2,
        "encoder4": 8 * f * k + k + x2,  # C channels at scale 8: C*K+K + K*K*8+K
        "decoder3": 2 * f * k + k + x2,
        "decoder4": 4 * f * k + k + x2,
        "decoder5": 8 * f * k + k + x2,
        "decoder5_input": 48 * k + k + x2,
    }
    assert {name: _n_params(h) for name, h in net.heads.items()} == expected
    assert _n_params(net) - _n_params(backbone) == sum(expected.values())


@pytest.mark.parametrize("case", ["tiny", "basic_unet"])
@pytest.mark.parametrize("training", [True, False])
def test_probe_keeps_mode_and_running_stats(case, training):
    factory = CASES[case][0]
    torch.manual_seed(0)
    backbone = factory()
    backbone.train(training)
    before = _bn_state(backbone)
    assert before, "the backbone must have normalisation running statistics"
    _, enc, dec, roi, _, _ = CASES[case]
    DSDNet(backbone, enc, dec, num_classes=K, in_channels=1, roi_size=roi)
    assert all(m.training == training for m in backbone.modules())
    after = _bn_state(backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_probe_keeps_per_module_modes():
    """A backbone with a frozen (eval-mode) BatchNorm inside a training model keeps that layer frozen."""
    backbone = TinyUNet()
    backbone.train()
    backbone.enc1[1].eval()
    modes = {name: m.training for name, m in backbone.named_modules()}
    DSDNet(backbone, TINY_ENCODER_TAPS, TINY_DECODER_TAPS, num_classes=K, in_channels=1, roi_size=(8, 8, 8))
    assert {name: m.training for name, m in backbone.named_modules()} == modes


def test_backbone_unchanged_by_wrapping():
    torch.manual_seed(0)
    backbone = TinyUNet()
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    children = [name for name, _ in backbone.named_children()]
    net = DSDNet(backbone, TINY_ENCODER_TAPS, TINY_DECODER_TAPS, num_classes=K, in_channels=1, roi_size=(8, 8, 8))
    assert net.backbone is backbone
    assert [name for name, _ in backbone.named_children()] == children
    new_state = backbone.state_dict()
    assert set(new_state) == set(state)
    assert all(torch.equal(state[k], new_state[k]) for k in state)


@pytest.mark.parametrize(
    "enc, dec, missing",
    [
        (["enc1", "enc9"], ["dec2"], "enc9"),
        (["enc1"], ["dec2", "nope:input"], "nope"),
        (["enc1"], ["dec2.7"], "dec2.7"),
        ([""], ["dec2"], "''"),
    ],
)
def test_unknown_tap_raises_key_error(enc, dec, missing):
    with pytest.raises(KeyError, match=missing):
        DSDNet(TinyUNet(), enc, dec, num_classes=K, in_channels=1, roi_size=(8, 8, 8))


def test_no_taps_trains_the_bare_backbone():
    # The Basic ablation row: no heads, the training output carries the backbone's logits only.
    backbone = TinyUNet()
    net = DSDNet(backbone, [], [], num_classes=K, in_channels=1, roi_size=(8, 8, 8))
    assert len(net.heads) == 0
    x = torch.randn(2, 1, 8, 8, 8)
    out = net.train()(x)
    assert out["encoder"] == [] and out["decoder"] == []
    assert torch.equal(out["pred"], backbone.train()(x))


@pytest.mark.parametrize("roi, tap", [((16, 16, 16), "0"), ((15, 16, 16), "1"), ((16, 16, 12), "1")])
def test_non_dividing_tap_raises_value_error(roi, tap):
    # "0": kernel 3, stride 2, no padding -> 16 gives 7; "1": adaptive pooling to 5 voxels per axis
    backbone = nn.Sequential(nn.Conv3d(1, 2, 3, stride=2), nn.AdaptiveAvgPool3d(5), nn.Conv3d(2, K, 1))
    with pytest.raises(ValueError, match=f"'{tap}'"):
        DSDNet(backbone, [tap], [], num_classes=K, in_channels=1, roi_size=roi)


def test_tap_not_reached_raises():
    with pytest.raises(RuntimeError, match="unused"):
        DSDNet(TinyUNet(), ["enc1", "unused"], ["dec2"], num_classes=K, in_channels=1, roi_size=(8, 8, 8))


@pytest.mark.parametrize("case", ["unetr", "tiny"])
def test_gradients_reach_every_head(case):
    net, backbone, roi = _build(case)
    net.train()
    x = torch.randn(2, 1, *roi)
    y = torch.randint(0, K, (2, 1, *roi))
    DSDLoss.from_ablation("DSD")(net(x), y).backward()
    for name, p in net.heads.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    # the backbone parameters that train are those that train without the wrapper
    # (some are never used in forward, e.g. TinyUNet.unused or UNETR's cross-attention norms)
    fresh = CASES[case][0]()
    fresh.load_state_dict(backbone.state_dict())
    fresh.train()
    DSDLoss.from_ablation("Basic")(fresh(x), y).backward()
    expected = {name for name, p in fresh.named_parameters() if p.grad is not None}
    assert {name for name, p in backbone.named_parameters() if p.grad is not None} == expected


@pytest.mark.parametrize(
    "ablation, encoder_heads_trained, decoder_heads_trained",
    [("Basic", False, False), ("DS", False, True), ("SDD", False, True), ("SDE", True, True), ("DSD", True, True)],
)
def test_which_heads_train_per_ablation(ablation, encoder_heads_trained, decoder_heads_trained):
    net, _, roi = _build("tiny")
    net.train()
    loss = DSDLoss.from_ablation(ablation)(net(torch.randn(2, 1, *roi)), torch.randint(0, K, (2, 1, *roi)))
    loss.backward()

    def trained(tap):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.heads[_key(tap)].parameters())

    assert [trained(t) for t in TINY_ENCODER_TAPS] == [encoder_heads_trained] * len(TINY_ENCODER_TAPS)
    assert [trained(t) for t in TINY_DECODER_TAPS] == [decoder_heads_trained] * len(TINY_DECODER_TAPS)


def test_deepcopy_of_wrapper_still_trains():
    """A deep copy (as made by e.g. ``torch.optim.swa_utils.AveragedModel``) must work on its own."""
    net, _, roi = _build("tiny")
    clone = copy.deepcopy(net)
    clone.train()
    out = clone(torch.randn(2, 1, *roi))
    assert len(out["encoder"]) == len(TINY_ENCODER_TAPS)
