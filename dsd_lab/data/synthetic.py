"""``dsd-synthetic``: small synthetic datasets written in the layout of the real ones, for tests and smoke runs.

Usage::

    dsd-synthetic mmwhs OUT_DIR [--cases N] [--test_cases M] [--seed S]   # M unlabelled scans in OUT_DIR/../ct_test
    dsd-synthetic brats OUT_DIR [--cases N] [--test_cases M] [--seed S]
    dsd-synthetic hippocampus OUT_DIR [--cases N] [--test_cases M] [--seed S]
"""

from __future__ import annotations

from dsd_lab.cli import run_command
from dsd_lab.data.synthetic_mmwhs import make_mmwhs
from dsd_lab.data.synthetic_msd import make_brats, make_hippocampus

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """``dsd-synthetic``: one sub-command per dataset; the summary line is printed, not every written path."""
    run_command({"mmwhs": make_mmwhs, "brats": make_brats, "hippocampus": make_hippocampus}, argv, name="dsd-synthetic")


if __name__ == "__main__":
    main()
