"""What every command shares: known library warnings hidden at the command line only, ``--verbose`` to see them; a
failed command ends with the line that says what is wrong and exit code 1."""

from __future__ import annotations

import warnings

import pytest

from custom.errors import DataError
from dsd_lab import cli

KNOWN = [
    (FutureWarning, "`labels=...` default changed", "monai.utils.deprecate_utils"),
    (UserWarning, "the prediction of class 3 is all 0, this may result in nan/inf distance.", "monai.metrics.x"),
    (UserWarning, "the ground truth of class 2 is all 0, this may result in nan/inf distance.", "monai.metrics.x"),
    (
        UserWarning,
        "parsing config_file configs/train.json: any `\"_target_\"` value in it is resolved to an importable callable "
        "and invoked with no allow list, and any `\"$\"`-prefixed value is passed to Python `eval()`. Only proceed if "
        "this config is from a source you trust (see https://github.com/Project-MONAI/MONAI/security/advisories/x).",
        "monai.bundle.scripts",
    ),
    (UserWarning, "tqdm is not installed, will not show the caching progress bar.", "monai.data.dataset"),
    (RuntimeWarning, "Mean of empty slice", "monai.handlers.utils"),
]
OTHERS = [
    (FutureWarning, "this project's own deprecation", "dsd_lab.experiments"),
    (UserWarning, "no available indices of class 3 to crop", "monai.transforms"),
]


def _shown(category, message, module) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.quiet_known_warnings()
        warnings.warn_explicit(message, category, filename="x.py", lineno=1, module=module)
    return bool(caught)


@pytest.mark.parametrize("category, message, module", KNOWN, ids=lambda v: str(v)[:20])
def test_known_library_warnings_are_hidden(category, message, module):
    assert not _shown(category, message, module)


@pytest.mark.parametrize("category, message, module", OTHERS, ids=lambda v: str(v)[:20])
def test_other_warnings_still_show(category, message, module):
    assert _shown(category, message, module)


def test_verbose_flag_or_variable_shows_everything(monkeypatch):
    monkeypatch.setenv(cli.VERBOSE_ENV, "")  # and back to unset afterwards, whatever --verbose sets
    seen = {}

    def command(folds: str = "", **overrides) -> None:
        seen.update(folds=folds, overrides=overrides, filters=list(warnings.filters))

    with warnings.catch_warnings():
        cli.run_command(command, ["--folds", "0,1"], name="dsd-x")
        assert cli.verbose() is False and seen["folds"] == (0, 1) and seen["overrides"] == {}
        assert any(f[2] is FutureWarning for f in seen["filters"])
    with warnings.catch_warnings():
        warnings.resetwarnings()
        cli.run_command(command, ["--verbose", "--folds", "0"], name="dsd-x")
        assert cli.verbose() is True and seen["folds"] == 0 and seen["overrides"] == {}  # not passed on
        assert not any(f[2] is FutureWarning for f in seen["filters"])
    monkeypatch.setenv(cli.VERBOSE_ENV, "0")
    assert cli.verbose() is False


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
        cli.run_command(command, [], name="dsd-test")
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback (most recent call last):" in err and err[-1] == last_line


@pytest.mark.parametrize(
    "args, subcommands, expected",
    [
        (["--size", "96", "--help"], [], ["--", "--help"]),
        (["-h"], [], ["--", "--help"]),
        (["mmwhs", "out", "--help"], ["mmwhs", "brats"], ["mmwhs", "--", "--help"]),
        (["--size", "96"], [], ["--size", "96"]),
        (["--", "--help"], [], ["--", "--help"]),
    ],
)
def test_help_is_asked_of_fire_without_running_the_command(args, subcommands, expected):
    assert cli.help_arguments(args, subcommands) == expected


def test_bench_help_prints_its_options_instead_of_failing():
    from tests.helpers import run_console

    result = run_console("dsd-bench", "--size", "96", "--help")
    shown = result.stdout + result.stderr  # fire writes its help to stderr without a terminal
    assert "--repeat" in shown and "Traceback" not in shown
