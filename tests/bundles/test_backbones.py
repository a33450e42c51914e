"""DSD on every backbone of the dsd_unetr_mmwhs bundle, built from its config files as a training run builds it.

Each backbone is the bundle's ``train.json`` (UNETR) or ``train.json`` + ``configs/backbone_<name>.json``,
shrunk by config overrides only.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

import custom.blockwise_loss as blockwise_loss
from custom.definitions import ABLATIONS, MMWHS_LABEL_CODES
from custom.losses import DSDLoss
from custom.networks import DeferredLogits, DSDNet, parse_tap
from dsd_lab.data.synthetic_mmwhs import make_mmwhs
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR
from tests.helpers import TINY_UNETR

CONFIGS = BUNDLE_DIR / "configs"

#: backbone -> (override file or None for train.json's own UNETR, config overrides that shrink it)
BACKBONES: dict[str, tuple[str | None, dict]] = {
    "unetr": (None, {k: TINY_UNETR[k] for k in ("roi_size", "feature_size", "hidden_size", "mlp_dim", "num_heads")}),
    "dynunet": ("backbone_dynunet.json", {"roi_size": [32, 32, 32], "dynunet_filters": [4, 8, 16, 32, 32]}),
    # 64 voxels along one axis keep SwinUNETR's 1/32 bottleneck above one voxel, which instance norm needs
    "swinunetr": (
        "backbone_swinunetr.json",
        {"roi_size": [64, 32, 32], "swinunetr_feature_size": 12, "swinunetr_depths": [1, 1, 1, 1]},
    ),
    "segresnet": (
        "backbone_segresnet.json",
        {"roi_size": [32, 32, 32], "segresnet_init_filters": 8, "segresnet_blocks_down": [1, 1, 1, 1]},
    ),
}
OVERRIDE_FILES = [name for name, (file, _) in BACKBONES.items() if file]

#: The paper's mapping at the bundle's full size: E_1..E_Z shallow to deep, D_1 (next to the output stage) .. D_Z.
EXPECTED_TAPS = {
    "unetr": (["encoder1", "encoder2", "encoder3", "encoder4"], ["decoder3", "decoder4", "decoder5", "decoder5:input"]),
    "dynunet": (
        ["input_block", "downsamples.0", "downsamples.1", "downsamples.2"],
        ["upsamples.2", "upsamples.1", "upsamples.0", "bottleneck"],
    ),
    "swinunetr": (
        ["encoder1", "encoder2", "encoder3", "encoder4", "swinViT.layers3.0"],
        ["decoder2", "decoder3", "decoder4", "decoder5", "encoder10"],
    ),
    "segresnet": (["down_layers.0", "down_layers.1", "down_layers.2"], ["up_layers.1", "up_layers.0", "down_layers.3"]),
}
#: The stage producing the full-resolution features of the main output; never tapped.
OUTPUT_STAGE = {"unetr": "decoder2", "dynunet": "upsamples.3", "swinunetr": "decoder1", "segresnet": "up_layers.2"}

K = 8  # MM-WHS classes


pytestmark = pytest.mark.usefixtures("single_thread")


def config_files(backbone: str, base: str) -> list[str]:
    override = BACKBONES[backbone][0]
    return [str(CONFIGS / base)] + ([str(CONFIGS / override)] if override else [])


def parser_for(backbone: str, base: str = "train.json", tiny: bool = True, **extra) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_files(backbone, base))
    for key, value in {**(BACKBONES[backbone][1] if tiny else {}), **extra}.items():
        parser[key] = value
    return parser


def head_scale(net: DSDNet, tap: str) -> int:
    """Upsampling factor of a tap's head (isotropic here): 2 ** number of x2 steps."""
    return 2 ** len(net.heads[tap.replace(".", "_").replace(":", "_")].steps)


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[DSDNet, torch.Tensor, dict]]:
    """Each backbone wrapped from the bundle config, after one DSD training step; with its input and output."""
    results = {}
    for name in BACKBONES:
        torch.manual_seed(0)
        net = parser_for(name).get_parsed_content("dsd_network")
        roi = BACKBONES[name][1]["roi_size"]
        x = torch.randn(2, 1, *roi)
        y = torch.randint(0, K, (2, 1, *roi))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        net.train()
        out = net(x)
        DSDLoss()(out, y).backward()
        grads = {n: p.grad.clone() for n, p in net.heads.named_parameters() if p.grad is not None}
        optimizer.step()
        results[name] = (net, x, {"out": out, "head_grads": grads})
    return results


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_taps_follow_the_paper_mapping(backbone):
    parser = parser_for(backbone, tiny=False)
    encoders, decoders = EXPECTED_TAPS[backbone]
    assert parser.get_parsed_content("encoder_taps") == encoders
    assert parser.get_parsed_content("decoder_taps") == decoders
    assert OUTPUT_STAGE[backbone] not in {parse_tap(t)[0] for t in encoders + decoders}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_tapped_stages_sit_where_the_method_puts_them(backbone, trained):
    net, x, _ = trained[backbone]
    enc = [head_scale(net, t) for t in net.encoder_taps]
    dec = [head_scale(net, t) for t in net.decoder_taps]
    assert enc[0] == 1 and enc == sorted(set(enc))  # E_1 at full resolution, each deeper than the last
    assert dec[0] == 2 and dec == sorted(set(dec))  # D_1 just below the full-resolution output stage
    assert dec[-1] == max(enc + dec)  # D_Z is the bottleneck end
    # and the untapped output stage is the full-resolution one that D_1 feeds
    features = {}
    stage = net.backbone.get_submodule(OUTPUT_STAGE[backbone])
    handle = stage.register_forward_hook(lambda module, args, output: features.__setitem__("out", output))
    try:
        with torch.no_grad():
            net.backbone.eval()(x[:1])
    finally:
        handle.remove()
    assert features["out"].shape[2:] == x.shape[2:]


def test_any_dynunet_filter_list_works():
    """A six-level nnU-Net: taps follow the depth, heads follow the channels, without editing the taps."""
    parser = parser_for("dynunet", dynunet_filters=[4, 8, 8, 16, 16, 24], roi_size=[64, 64, 64])
    net = parser.get_parsed_content("dsd_network")
    assert net.encoder_taps == ["input_block", "downsamples.0", "downsamples.1", "downsamples.2", "downsamples.3"]
    assert net.decoder_taps == ["upsamples.3", "upsamples.2", "upsamples.1", "upsamples.0", "bottleneck"]
    assert [head_scale(net, t) for t in net.decoder_taps] == [2, 4, 8, 16, 32]
    assert net.heads["bottleneck"].to_logits.in_channels == 24


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_training_forward_backward(backbone, trained):
    net, x, result = trained[backbone]
    out = result["out"]
    assert out["pred"].shape == (2, K, *x.shape[2:])
    assert len(out["encoder"]) == len(net.encoder_taps) and len(out["decoder"]) == len(net.decoder_taps)
    heads = out["encoder"] + out["decoder"]
    assert all(isinstance(head, DeferredLogits) for head in heads)  # the bundle's blockwise setting
    assert all(head.upsample().shape == out["pred"].shape for head in heads)
    assert set(result["head_grads"]) == {n for n, _ in net.heads.named_parameters()}
    assert all(torch.count_nonzero(g) > 0 for g in result["head_grads"].values())


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_blockwise_loss_equals_full_resolution_loss(backbone):
    """The bundle's deferred heads and blockwise loss give eq. 4's terms and gradients (float64)."""
    roi = BACKBONES[backbone][1]["roi_size"]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, *roi, generator=generator, dtype=torch.float64)
    y = torch.randint(0, K, (2, 1, *roi), generator=generator)
    results = []
    for defer in (True, False):
        torch.manual_seed(0)
        net = parser_for(backbone, defer_upsampling=defer).get_parsed_content("dsd_network").double().train()
        loss, out = DSDLoss(), net(x)
        if defer:  # the heads share a voxel order, so the blockwise path runs rather than its fallback
            blockwise_loss._Layout(roi, [h.scale for h in out["encoder"] + out["decoder"]], 4096)
        loss(out, y).backward()
        results.append((loss.latest_terms, {n: p.grad for n, p in net.named_parameters() if p.grad is not None}))
    (terms, grads), (expected_terms, expected_grads) = results
    for name, value in expected_terms.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-10, atol=1e-12)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_checkpoint_loads_into_the_inference_network_with_identical_output(backbone, trained, tmp_path):
    net, x, _ = trained[backbone]
    torch.save(net.backbone.state_dict(), tmp_path / "model.pt")  # what the bundle's CheckpointSaver writes
    bare = parser_for(backbone, base="inference.json").get_parsed_content("network_def")
    assert type(bare) is type(net.backbone)
    bare.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    net.eval(), bare.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), bare(x), rtol=0, atol=0)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_torchscript_export_after_training(backbone, trained):
    net, x, _ = trained[backbone]
    backbone_module = net.backbone.eval()
    if backbone == "swinunetr":  # MONAI's SwinUNETR is not scriptable; traced at the training ROI size
        exported = torch.jit.trace(backbone_module, x[:1])
    else:
        exported = torch.jit.script(backbone_module)
    buffer = io.BytesIO()
    torch.jit.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x[:1]), backbone_module(x[:1]), rtol=1e-5, atol=1e-5)


def test_shared_heads_pair_encoder_and_decoder_stages_of_equal_resolution(trained):
    net = trained["dynunet"][0]
    heads = net.heads
    assert heads["downsamples_0"] is heads["upsamples_2"]
    assert heads["downsamples_1"] is heads["upsamples_1"] and heads["downsamples_2"] is heads["upsamples_0"]
    assert len({id(h) for h in heads.values()}) == 5  # input_block, three shared pairs, bottleneck
    unshared = parser_for("dynunet", share_heads=False).get_parsed_content("dsd_network")
    assert len({id(h) for h in unshared.heads.values()}) == 8
    # a shared head is counted once, and the deployable backbone is the same either way
    assert sum(p.numel() for p in net.heads.parameters()) < sum(p.numel() for p in unshared.heads.parameters())
    assert set(net.backbone.state_dict()) == set(unshared.backbone.state_dict())


ALL_OVERRIDE_FILES = sorted(BUNDLE_DIR.parent.glob("*/configs/backbone_*.json"))


@pytest.mark.parametrize("override", ALL_OVERRIDE_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_override_file_is_bundle_agnostic_and_needs_no_custom_code(override):
    """The same file merges after train.json and inference.json; its references must exist in both."""
    text = override.read_text()
    content = json.loads(text)
    assert "custom" not in text
    train, inference = (json.loads((override.parent / name).read_text()) for name in ("train.json", "inference.json"))
    for ref in set(re.findall(r"@(\w+)", text)) - set(content):
        assert ref in train and ref in inference, ref
    assert {"network_def", "encoder_taps", "decoder_taps", "share_heads"} <= set(content)
    assert "@share_heads" in train["dsd_network"]["share_heads"]  # else the file's share_heads would be ignored


@pytest.mark.parametrize("ablation", ["Basic", "DS", "SDD", "SDE", "DSD", "sdd"])
@pytest.mark.parametrize("backbone", ["unetr", "dynunet"])
def test_ablation_switch_sets_loss_weights(ablation, backbone):
    workflow = ConfigWorkflow(config_file=config_files(backbone, "train.json"), workflow_type="train", ablation=ablation)
    loss = workflow.parser.get_parsed_content("loss")
    assert (loss.eta, loss.alpha1, loss.alpha2) == tuple(ABLATIONS[ablation.lower()][k] for k in ("eta", "alpha1", "alpha2"))


# ---- the literal CLI: one short training epoch, evaluation and inference per backbone override --------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("mmwhs_backbones")
    # about one ROI per volume after resampling to 1.5 x 1.5 x 2 mm: one sliding window per case keeps the CLI fast
    make_mmwhs(data_dir, cases=3, seed=5, shape=(48, 48, 28))
    return data_dir


def run_cli(args: list[str], cwd: Path) -> None:
    # one intra-op thread: tiny tensors on a busy 2-core machine run several times faster than with two
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def cli_args(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in (f"--{key}", json.dumps(value))]


@pytest.mark.parametrize("backbone", OVERRIDE_FILES)
def test_cli_train_evaluate_and_infer_with_backbone_override(backbone, dataset, tmp_path):
    bundle = tmp_path / "dsd_unetr_mmwhs"
    shutil.copytree(BUNDLE_DIR, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    override = f"configs/{BACKBONES[backbone][0]}"
    tiny = {**BACKBONES[backbone][1], "dataset_dir": str(dataset)}
    train = {**tiny, "num_folds": 3, "max_epochs": 1, "val_interval": 1, "num_samples": 1, "num_workers": 0}
    run_cli(["training", "--config_file", f"['configs/train.json','{override}']", *cli_args(train)], bundle)

    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    bare = parser_for(backbone, base="inference.json").get_parsed_content("network_def")
    bare.load_state_dict(state, strict=True)  # the checkpoint is the plain backbone, no DSD heads

    if backbone == "dynunet":  # evaluate.json loads the checkpoint the same way for every backbone; one suffices
        evaluate = f"['configs/train.json','{override}','configs/evaluate.json']"
        run_cli(["evaluating", "--config_file", evaluate, *cli_args(train)], bundle)
        assert len(list((bundle / "eval" / "predictions").glob("*_seg.nii.gz"))) == 1  # fold 0 of 3 cases
        with open(bundle / "eval" / "val_mean_dice_raw.csv") as f:
            assert len(f.read().splitlines()) == 2  # header and that case

    output_dir = tmp_path / "predictions"
    infer = {**tiny, "output_dir": str(output_dir)}
    run_cli(["--config_file", f"['configs/inference.json','{override}']", *cli_args(infer)], bundle)
    images = sorted(dataset.glob("*_image.nii.gz"))
    written = sorted(output_dir.glob("*_seg.nii.gz"))
    assert [p.name for p in written] == [p.name.replace(".nii.gz", "_seg.nii.gz") for p in images]
    for image_path, prediction_path in zip(images, written):
        prediction = nib.load(prediction_path)
        assert prediction.shape == nib.load(image_path).shape
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, *MMWHS_LABEL_CODES}
