"""Semi-supervised study: supervised only (Basic), DSD, DMD and DMD + DSD at one labelled fraction, on one fold.

Usage::

    dsd-dmd BUNDLE_DIR --dataset_dir DATA [--fold 0] [--labelled_fraction 0.1] [--labelled_seed 0]
        [--rows Basic,DSD,DMD,DMD+DSD] [--work_dir dmd_runs] [--configs backbone_dynunet.json]
        [--tracking mlflow] [--any_config_id value]

Every row keeps the labels of the same training cases (``labelled_fraction``, ``labelled_seed``). Basic and DSD train
one network on them alone; DMD and DMD + DSD merge the bundle's ``configs/strategy_dmd.json`` and train two networks
that also learn from the unlabelled images (the other training cases and the dataset's unlabelled set, or
``--unlabelled_dir``). Each row is a run in ``WORK_DIR/labelled_<fraction>/<row>/fold_<k>/`` (no ``fold_<k>`` for a
bundle with a fixed split), evaluated on the validation fold (the test split for MSD tasks), and finished runs are
skipped when the command runs again. The table goes to ``WORK_DIR/labelled_<fraction>/semi_supervised[_fold<k>]``
``.csv`` and ``.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from custom.definitions import DMD_ROWS
from custom.semi_supervised import check_fraction
from dsd_lab.bundles import bundle_config, bundle_has_folds
from dsd_lab.cli import run_command
from dsd_lab.experiments.study import as_list, run_study, study_run_dir
from dsd_lab.experiments.tables import write_comparison_tables

__all__ = ["STRATEGY_CONFIG", "main", "semi_supervised_study"]

logger = logging.getLogger(__name__)

#: The bundle config file of the DMD strategy, merged after train.json for the rows with two networks.
STRATEGY_CONFIG = "strategy_dmd.json"


def _canonical_row(name: str) -> str:
    for row in DMD_ROWS:
        if row.lower() == str(name).strip().lower():
            return row
    raise ValueError(f"Unknown row '{name}'; choose from {list(DMD_ROWS)}.")


def _dmd_setting(bundle: Path, configs: list[str], overrides: dict[str, Any]) -> str:
    """The mutual distillation's settings in words, as the DMD rows run them."""
    parser = bundle_config(bundle, ["train.json", STRATEGY_CONFIG, *configs])
    values = {key: overrides.get(key, parser.get_parsed_content(key)) for key in ("dmd_lambda", "dmd_temperature")}
    rampup = overrides.get("dmd_rampup_epochs", parser.get_parsed_content("dmd_rampup_epochs"))
    ramp = f", ramp-up {rampup} epochs" if float(rampup) > 0 else ""
    return f"lambda {values['dmd_lambda']}, T {values['dmd_temperature']}{ramp}"


def semi_supervised_study(
    bundle_dir: str,
    dataset_dir: str,
    fold: int = 0,
    labelled_fraction: float = 0.1,
    labelled_seed: int = 0,
    rows: Any = tuple(DMD_ROWS),
    work_dir: str | None = None,
    configs: Any = (),
    tracking: str | None = None,
    **overrides: Any,
) -> str:
    """Train and evaluate each row with the same share of labels, then write the comparison table.

    Args:
        bundle_dir: the bundle root.
        dataset_dir: the dataset, as the bundle's ``--dataset_dir``.
        fold: the cross-validation fold; ignored by bundles with a fixed split.
        labelled_fraction: the share of training cases that keep their labels, in (0, 1].
        labelled_seed: the seed that chooses them.
        rows: any of Basic, DSD, DMD, DMD+DSD (case-insensitive), in table order.
        work_dir: where the runs and the table go; ``dmd_<bundle name>`` by default.
        configs: extra config files of the bundle merged after its own, e.g. ``backbone_dynunet.json``.
        tracking: ``"mlflow"`` logs every training run to ``WORK_DIR/mlruns.db``.
        overrides: any other config id and value, passed to every run (``--max_epochs``, ``--dmd_lambda``,
            ``--unlabelled_dir``); ``ablation`` is set by each row.

    Returns:
        The Markdown table, also printed.

    Raises:
        ValueError: an unknown row, a fraction outside (0, 1], or ``--ablation`` among the overrides.
    """
    if "ablation" in overrides:
        raise ValueError("--ablation is set by each row of the study; choose the rows with --rows instead.")
    fraction = check_fraction(labelled_fraction)
    bundle = Path(bundle_dir)
    names = [_canonical_row(row) for row in as_list(rows)]
    run_fold = int(fold) if bundle_has_folds(bundle) else None
    work = Path(work_dir or f"dmd_{bundle.resolve().name}") / f"labelled_{fraction:g}"
    settings = {**overrides, "labelled_fraction": fraction, "labelled_seed": int(labelled_seed)}
    extra_configs = as_list(configs)
    mutual = _dmd_setting(bundle, extra_configs, overrides)
    results, columns = {}, {}
    for position, row in enumerate(names, 1):
        ablation, two_networks = DMD_ROWS[row]
        logger.info("Semi-supervised study: %s (%d of %d) in %s", row, position, len(names), study_run_dir(work, row, run_fold))
        row_configs = [*extra_configs, STRATEGY_CONFIG] if two_networks else extra_configs
        results[row] = run_study(bundle, work, ablation, run_fold, dataset_dir, settings, row_configs, tracking, row=row)
        columns[row] = {"supervised loss": ablation, "mutual distillation": mutual if two_networks else "none"}
    stem = "semi_supervised" if run_fold is None else f"semi_supervised_fold{run_fold}"
    table = write_comparison_tables(results, work, stem, name_column="variant", settings=columns)
    where = "the test split" if run_fold is None else f"fold {run_fold}"
    print(
        f"\nSemi-supervised study on {bundle.resolve().name}, {where}, labelled fraction {fraction:g} "
        f"(seed {int(labelled_seed)}; mean ± std over cases):\n\n{table}"
    )
    print(f"Tables: {work / stem}.csv, {work / stem}.md")
    return table


def main(argv: list[str] | None = None) -> None:
    """``dsd-dmd``: :func:`semi_supervised_study` from the command line."""
    run_command(semi_supervised_study, argv, name="dsd-dmd")


if __name__ == "__main__":
    main()
