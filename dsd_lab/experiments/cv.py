"""K-fold cross-validation of a bundle, reported as the paper's Table 2 (mean ± std over folds).

Usage::

    dsd-cv BUNDLE_DIR --dataset_dir DATA [--folds 0,1,2,3,4] [--work_dir cv_runs]
        [--configs backbone_dynunet.json] [--tracking mlflow] [--any_config_id value ...]

Each fold trains and evaluates through the bundle's own train.json and evaluate.json in
``WORK_DIR/<ablation>/fold_<k>/`` (see :mod:`dsd_lab.experiments.study`); finished folds are skipped and an interrupted
fold resumes from its last checkpoint when the command is run again. ``WORK_DIR/<ablation>/`` then holds
``cv_folds.csv``, ``cv_summary.csv`` and ``cv_summary.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from custom.definitions import canonical_ablation
from dsd_lab.bundles import bundle_has_folds, default_value
from dsd_lab.cli import run_command
from dsd_lab.experiments.study import as_list, run_study, study_run_dir
from dsd_lab.experiments.tables import write_cv_tables

__all__ = ["cross_validate", "main"]


def cross_validate(
    bundle_dir: str,
    dataset_dir: str,
    folds: Any = None,
    work_dir: str | None = None,
    configs: Any = (),
    tracking: str | None = None,
    **overrides: Any,
) -> str:
    """Train and evaluate every requested fold, then write the cross-validation tables.

    Args:
        bundle_dir: the bundle root; its train.json must split data into folds (``fold``, ``num_folds``).
        dataset_dir: the dataset, as the bundle's ``--dataset_dir``.
        folds: fold indices, e.g. ``0,1,2,3,4``; all ``num_folds`` folds by default.
        work_dir: where the runs and tables go; ``cv_<bundle name>`` by default.
        configs: extra config files of the bundle merged after its own, e.g. ``backbone_dynunet.json``.
        tracking: ``"mlflow"`` logs every training run to ``WORK_DIR/mlruns.db``.
        overrides: any other config id and value, passed to every run (``--max_epochs 300``, ``--ablation DS``).

    Returns:
        The Markdown summary table, also printed.

    Raises:
        ValueError: when the bundle has no folds or a fold index is out of range.
    """
    bundle = Path(bundle_dir)
    if not bundle_has_folds(bundle):
        raise ValueError(
            f"{bundle / 'configs' / 'train.json'} defines no 'fold': this bundle has a fixed split, so there is "
            "nothing to cross-validate. Use `dsd-ablation` or `dsd-report` instead."
        )
    num_folds = int(overrides.get("num_folds", default_value(bundle, "num_folds")))
    fold_list = [int(f) for f in as_list(folds)] if folds is not None else list(range(num_folds))
    bad = [f for f in fold_list if not 0 <= f < num_folds]
    if bad or not fold_list:
        raise ValueError(f"--folds {folds!r}: fold indices must lie in 0..{num_folds - 1} (num_folds={num_folds}).")
    ablation = canonical_ablation(overrides.pop("ablation", default_value(bundle, "ablation")))
    work = Path(work_dir or f"cv_{bundle.resolve().name}")
    results = {}
    for position, fold in enumerate(fold_list, 1):
        run_dir = study_run_dir(work, ablation, fold)
        print(f"\n{ablation} cross-validation: fold {fold} ({position} of {len(fold_list)}) in {run_dir}", flush=True)
        results[fold] = run_study(bundle, work, ablation, fold, dataset_dir, overrides, as_list(configs), tracking)
    table = write_cv_tables(results, work / ablation)
    print(f"\n{ablation} on {bundle.resolve().name}, {len(fold_list)}-fold cross-validation:\n\n{table}")
    print(f"Tables: {work / ablation}")
    return table


def main(argv: list[str] | None = None) -> None:
    """``dsd-cv``: :func:`cross_validate` from the command line."""
    run_command(cross_validate, argv, name="dsd-cv")


if __name__ == "__main__":
    main()
