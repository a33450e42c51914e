"""Model Zoo readiness of both bundles that needs no training: metadata against the schema, multi-GPU configs, docs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_module

BUNDLES = sorted(p.parent.parent for p in ROOT.glob("bundles/*/configs/metadata.json"))
#: The environment variable naming an offline copy of the metadata schema; `.ci/run` sets it.
SCHEMA_ENV = "MONAI_DSD_META_SCHEMA"
SCHEMA_NAME = "meta_schema_20240725.json"


@pytest.fixture(scope="module")
def schema_file() -> Path:
    """The offline metadata schema: ``$MONAI_DSD_META_SCHEMA``, else ``../shared/monai/`` beside the checkout."""
    if os.environ.get(SCHEMA_ENV):
        path = Path(os.environ[SCHEMA_ENV])
        assert path.is_file(), f"{SCHEMA_ENV}={path} does not exist"
        return path
    path = ROOT.parent / "shared" / "monai" / SCHEMA_NAME
    if not path.is_file():
        pytest.skip(f"no offline metadata schema: set {SCHEMA_ENV} to a copy of {SCHEMA_NAME}")
    return path


def test_bundles_are_found():
    assert [b.name for b in BUNDLES] == ["dsd_unetr_brats", "dsd_unetr_hippocampus", "dsd_unetr_mmwhs"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_metadata_passes_the_zoo_schema_with_the_literal_command(bundle, schema_file):
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["schema"].endswith("/" + SCHEMA_NAME)
    args = ["verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(schema_file)]
    result = run_module("monai.bundle", *args, cwd=bundle)
    assert "metadata is verified with no error" in result.stdout + result.stderr


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_metadata_names_io_lists_version_and_cites_dsd(bundle):
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    io = metadata["network_data_format"]
    assert list(io["inputs"]) == ["image"] and list(io["outputs"]) == ["pred"]
    assert metadata["version"] in metadata["changelog"]
    assert any("dual self-distillation" in reference.lower() for reference in metadata["references"])
    needed = {"pytorch-ignite", "nibabel", "einops", "fire", "scipy", "tensorboard"}
    assert needed <= set(metadata["required_packages_version"])


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_multi_gpu_configs_pick_the_backend_from_the_device_and_save_the_backbone(bundle):
    train = json.loads((bundle / "configs" / "multi_gpu_train.json").read_text())
    evaluate = json.loads((bundle / "configs" / "multi_gpu_evaluate.json").read_text())
    for config in (train, evaluate):
        assert "'nccl' if @device.type == 'cuda' else 'gloo'" in " ".join(config["initialize"])
        assert "destroy_process_group" in " ".join(config["finalize"])
        assert config["validate#sampler"]["even_divisible"] is False
    assert train["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert train["train#sampler"]["_target_"] == "DistributedSampler"
    base = json.loads((bundle / "configs" / "train.json").read_text())
    named = {f"@validate#{key}": value for key, value in base["validate"].items()}  # handlers listed by reference
    handlers = [named[h] if isinstance(h, str) else h for h in base["train"]["handlers"] + base["validate"]["handlers"]]
    savers = [h for h in handlers if h["_target_"] == "CheckpointSaver"]
    assert len(savers) == 2 and all(h["save_dict"] == {"model": "@network_def"} for h in savers)


#: Sections of a Model Zoo bundle README, in order.
README_SECTIONS = [
    "Model Overview",
    "Data",
    "Training Configuration",
    "Performance",
    "MONAI Bundle Commands",
    "Limitations",
    "Citation",
]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_docs_follow_the_zoo_shape(bundle):
    readme = (bundle / "docs" / "README.md").read_text()
    headings = [h.strip() for h in re.findall(r"^##\s+(.+)$", readme, re.M)]
    lowered = [h.lower() for h in headings]
    positions = [next((i for i, h in enumerate(lowered) if h.startswith(s.lower())), -1) for s in README_SECTIONS]
    assert -1 not in positions and positions == sorted(positions), headings
    commands = ("multi_gpu_train.json", "multi_gpu_evaluate.json", "ckpt_export", "verify_metadata", "dsd-package")
    assert [c for c in commands if c not in readme] == []
    assert (bundle / "docs" / "data_license.txt").read_text().strip()


def test_ci_points_the_schema_variable_at_the_copy_beside_the_checkout():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert f'export {SCHEMA_ENV}="$(pwd)/../shared/monai/{SCHEMA_NAME}"' in ci_lines
