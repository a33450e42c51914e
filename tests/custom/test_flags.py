"""Boolean options from the command line: ``--share_heads false`` must mean false."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigWorkflow

from custom.flags import as_flag
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), ("true", True), ("False", False), (" yes ", True), ("0", False), (1, True)],
)
def test_as_flag(value, expected):
    assert as_flag(value, "share_heads") is expected


@pytest.mark.parametrize("value", ["maybe", "", 2])
def test_as_flag_rejects_other_values_naming_the_option(value):
    with pytest.raises(ValueError, match="detach_teacher must be true or false"):
        as_flag(value, "detach_teacher")


@pytest.mark.parametrize("text, expected", [("false", False), ("true", True)])
def test_command_line_strings_reach_the_loss_and_network_as_booleans(text, expected):
    configs = [str(BUNDLE_DIR / "configs" / "train.json"), str(BUNDLE_DIR / "configs" / "backbone_segresnet.json")]
    workflow = ConfigWorkflow(config_file=configs, workflow_type="train", detach_teacher=text, share_heads=text)
    assert workflow.parser.get_parsed_content("loss").detach_teacher is expected
    assert workflow.parser.get_parsed_content("dsd_network#share_heads") is expected
