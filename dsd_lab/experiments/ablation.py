"""The paper's ablation study (Table 1): Basic, DS, SDD, SDE and DSD trained and evaluated alike.

Usage::

    dsd-ablation BUNDLE_DIR --dataset_dir DATA [--fold 0] [--rows Basic,DS,SDD,SDE,DSD]
        [--work_dir ablation_runs] [--configs backbone_dynunet.json] [--tracking mlflow] [--any_config_id value]

Each row is a run in ``WORK_DIR/<row>/fold_<k>/`` (``WORK_DIR/<row>/`` for a bundle with a fixed split, such as
BraTS, whose evaluation is on the test split: the table is then the paper's Table 3 layout). The runs are shared
with ``dsd-cv`` given the same work folder and settings, and finished ones are skipped. The table goes to
``WORK_DIR/ablation[_fold<k>].csv`` and ``.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from custom.definitions import ABLATION_NAMES, ablation_weights, canonical_ablation
from dsd_lab.bundles import bundle_has_folds
from dsd_lab.cli import run_command
from dsd_lab.experiments.study import as_list, run_study, study_run_dir, write_study_table

__all__ = ["ablation_study", "main"]


def ablation_study(
    bundle_dir: str,
    dataset_dir: str,
    fold: int = 0,
    rows: Any = ABLATION_NAMES,
    work_dir: str | None = None,
    configs: Any = (),
    tracking: str | None = None,
    **overrides: Any,
) -> str:
    """Train and evaluate each ablation row on one fold, then write the comparison table.

    Args:
        bundle_dir: the bundle root.
        dataset_dir: the dataset, as the bundle's ``--dataset_dir``.
        fold: the cross-validation fold; ignored by bundles with a fixed split.
        rows: the rows to run, any of Basic, DS, SDD, SDE, DSD (case-insensitive), in table order.
        work_dir: where the runs and the table go; ``ablation_<bundle name>`` by default.
        configs: extra config files of the bundle merged after its own, e.g. ``backbone_dynunet.json``.
        tracking: ``"mlflow"`` logs every training run to ``WORK_DIR/mlruns.db``.
        overrides: any other config id and value, passed to every run; ``ablation`` is set by each row.

    Returns:
        The Markdown table, also printed.

    Raises:
        ValueError: an unknown row name, or ``--ablation`` among the overrides.
    """
    if "ablation" in overrides:
        raise ValueError("--ablation is set by each row of the study; choose the rows with --rows instead.")
    bundle = Path(bundle_dir)
    names = [canonical_ablation(str(row)) for row in as_list(rows)]
    run_fold = int(fold) if bundle_has_folds(bundle) else None
    work = Path(work_dir or f"ablation_{bundle.resolve().name}")
    results, weights = {}, {}
    for position, row in enumerate(names, 1):
        print(f"\nAblation: {row} ({position} of {len(names)}) in {study_run_dir(work, row, run_fold)}", flush=True)
        results[row] = run_study(bundle, work, row, run_fold, dataset_dir, overrides, as_list(configs), tracking)
        weights[row] = ablation_weights(row)
    title = f"Ablation on {bundle.resolve().name}"
    return write_study_table(results, work, "ablation", run_fold, title, name_column="variant", settings=weights)


def main(argv: list[str] | None = None) -> None:
    """``dsd-ablation``: :func:`ablation_study` from the command line."""
    run_command(ablation_study, argv, name="dsd-ablation")


if __name__ == "__main__":
    main()
