"""The runtime's errors: problems raised at the first or collected all, and the line that ends a failed command."""

from __future__ import annotations

import sys
import traceback

import pytest

from custom.definitions import ablation_weights
from custom.errors import (
    DataError,
    MissingDataError,
    collecting_problems,
    failure_line,
    install_exception_hook,
    report_problem,
)


def test_problems_raise_outside_a_collection_and_are_collected_inside():
    with pytest.raises(MissingDataError, match="^/d/a.nii.gz: gone$") as raised:
        report_problem("/d/a.nii.gz", "missing file", "gone")
    assert isinstance(raised.value, FileNotFoundError) and raised.value.problem.fault == "missing file"
    with pytest.raises(DataError, match="^/d/b.nii.gz: 2 NaN/Inf voxel"):
        report_problem("/d/b.nii.gz", "NaN/Inf", "2 NaN/Inf voxel(s)")
    with collecting_problems() as problems:
        report_problem("/d/a.nii.gz", "missing file", "gone")
        report_problem("/d/b.nii.gz", "shape", "off the grid")
    assert [(p.file, p.fault) for p in problems] == [("/d/a.nii.gz", "missing file"), ("/d/b.nii.gz", "shape")]
    with pytest.raises(DataError):  # collecting ended with its block
        report_problem("/d/c.nii.gz", "shape", "off the grid")


def _raised(make) -> BaseException:
    try:
        make()
    except Exception as error:
        return error
    raise AssertionError("nothing raised")


def _wrapped(error: Exception) -> None:
    try:
        raise error
    except Exception as inner:
        raise RuntimeError("Failed to instantiate component 'custom.datasets.CacheDataset'") from inner


def _from_worker() -> None:
    # How PyTorch's DataLoader re-raises an error of a worker process: its formatted traceback as the message.
    text = "".join(traceback.format_exception(_raised(lambda: _wrapped(DataError("/d/x.nii.gz: 1 NaN/Inf voxel(s)")))))
    raise RuntimeError(f"Caught RuntimeError in DataLoader worker process 0.\nOriginal {text}")


@pytest.mark.parametrize(
    "make, line",
    [
        (lambda: _wrapped(DataError("/d/x.nii.gz: truncated")), "DataError: /d/x.nii.gz: truncated"),
        (lambda: _wrapped(_raised(lambda: ablation_weights("XYZ"))), "ValueError: Unknown ablation 'XYZ'"),
        (_from_worker, "DataError: /d/x.nii.gz: 1 NaN/Inf voxel(s)"),
        (lambda: _wrapped(ValueError("not raised by the runtime")), None),
        (lambda: report_problem("/d/x.nii.gz", "shape", "off"), None),  # Python's own last line already says it
    ],
)
def test_the_failure_line_digs_out_the_runtimes_own_error(make, line):
    found = failure_line(_raised(make))
    if line is None:
        assert found is None
    else:
        assert found.startswith(line), found


def test_the_exception_hook_ends_the_traceback_with_the_failure_line_once(monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    install_exception_hook()
    install_exception_hook()
    error = _raised(lambda: _wrapped(DataError("/d/x.nii.gz: truncated")))
    sys.excepthook(type(error), error, error.__traceback__)
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback (most recent call last):" in lines
    assert lines[-2:] == ["RuntimeError: Failed to instantiate component 'custom.datasets.CacheDataset'",
                          "DataError: /d/x.nii.gz: truncated"]  # fmt: skip
