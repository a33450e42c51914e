"""``dsd-params``: the DSD head parameter overhead of every bundle and backbone."""

from __future__ import annotations

import shutil

import pytest

from dsd_lab.benchmarks.head_params import ParamRow, head_parameter_table
from tests.helpers import MMWHS_BUNDLE

CONFIGS = MMWHS_BUNDLE / "configs"


def test_params_table_covers_every_bundle_and_backbone(tmp_path, capsys):
    bundles = tmp_path / "bundles"
    shutil.copytree(CONFIGS, bundles / "a_full" / "configs")
    (bundles / "b_second" / "configs").mkdir(parents=True)  # a second bundle with one override is discovered
    for name in ("train.json", "backbone_segresnet.json"):
        shutil.copy(CONFIGS / name, bundles / "b_second" / "configs" / name)
    rows = head_parameter_table(bundles_dir=str(bundles))
    table = capsys.readouterr().out
    assert [(r.bundle, r.config) for r in rows] == [
        ("a_full", "train.json"),
        ("a_full", "backbone_dynunet.json"),
        ("a_full", "backbone_segresnet.json"),
        ("a_full", "backbone_swinunetr.json"),
        ("b_second", "train.json"),
        ("b_second", "backbone_segresnet.json"),
    ]
    by_name = {r.backbone: r for r in rows if r.bundle == "a_full"}
    # the paper: +0.017 % for UNETR and +0.052 % for nnU-Net on MM-WHS, with the same taps
    assert by_name["UNETR"] == ParamRow("a_full", "UNETR", "train.json", 101_805_448, 17_272)
    assert round(by_name["UNETR"].overhead_percent, 3) <= 0.017
    assert by_name["DynUNet"].backbone_params == 16_670_408 and by_name["DynUNet"].head_params == 8_520
    assert round(by_name["DynUNet"].overhead_percent, 3) <= 0.052
    assert set(by_name) == {"UNETR", "DynUNet", "SwinUNETR", "SegResNet"}
    assert all(0 < r.overhead_percent < 0.1 for r in rows)
    assert "| a_full | DynUNet | backbone_dynunet.json | 16,670,408 | 8,520 | +0.051 % |" in table


def test_params_without_bundles_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        head_parameter_table(bundles_dir=str(tmp_path))
