"""Checkpoints a user can point at: ``--ckpt_file`` of evaluation and inference, and what a missing one says."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from tests.helpers import BRATS_BUNDLE, HIPPOCAMPUS_BUNDLE, MMWHS_BUNDLE


@pytest.mark.parametrize("bundle", [MMWHS_BUNDLE, BRATS_BUNDLE, HIPPOCAMPUS_BUNDLE], ids=lambda p: p.name)
@pytest.mark.parametrize(
    "config_files", [["inference.json"], ["train.json", "evaluate.json"]], ids=["infer", "evaluate"]
)
def test_a_missing_checkpoint_stops_with_one_line_naming_it_and_the_option(bundle, config_files, tmp_path):
    missing = tmp_path / "models" / "model.pt"
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / name) for name in config_files],
        workflow_type=None,
        bundle_root=str(tmp_path),
        ckpt_file=str(missing),
    )
    with pytest.raises(SystemExit) as stopped:  # before any data is read
        workflow.initialize()
        workflow.run()
    message = str(stopped.value.code)
    assert "\n" not in message and str(missing) in message and "--ckpt_file" in message


@pytest.mark.parametrize("bundle", [MMWHS_BUNDLE, BRATS_BUNDLE, HIPPOCAMPUS_BUNDLE], ids=lambda p: p.name)
@pytest.mark.parametrize(
    "config_files, handlers_id",
    [(["inference.json"], "handlers"), (["train.json", "evaluate.json"], "validate#handlers")],
    ids=["infer", "evaluate"],
)
def test_the_checkpoint_to_load_is_one_top_level_id(bundle, config_files, handlers_id):
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / name) for name in config_files])
    loaders = [h for h in parser.get(handlers_id) if isinstance(h, dict) and h["_target_"] == "CheckpointLoader"]
    assert [h["load_path"] for h in loaders] == ["@ckpt_file"]
    parser["bundle_root"], parser["ckpt_dir"] = "root", "root/models"
    assert Path(parser.get_parsed_content("ckpt_file")) == Path("root/models/model.pt")
