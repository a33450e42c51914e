"""What every lab command does when it fails: the traceback, then the line that says what is wrong, exit code 1."""

from __future__ import annotations

import pytest

from custom.errors import DataError
from dsd_lab.cli import run_command


def _fails_deep_inside() -> None:
    try:
        raise DataError("/d/ct_train_1001_image.nii.gz: 1 NaN/Inf voxel(s)")
    except DataError as error:
        raise RuntimeError("Failed to instantiate component 'custom.datasets.CacheDataset'") from error


def _fails_plainly() -> None:
    raise KeyError("no such run")


@pytest.mark.parametrize(
    "command, last_line",
    [
        (_fails_deep_inside, "DataError: /d/ct_train_1001_image.nii.gz: 1 NaN/Inf voxel(s)"),
        (_fails_plainly, "KeyError: 'no such run'"),
    ],
)
def test_a_failed_command_ends_with_what_is_wrong_and_exit_code_1(capsys, command, last_line):
    with pytest.raises(SystemExit) as exited:
        run_command(command, [], name="dsd-test")
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback (most recent call last):" in err and err[-1] == last_line
