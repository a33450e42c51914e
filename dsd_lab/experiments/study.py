"""The layout that the study commands share: one run folder per ablation row and fold, with the same overrides.

:mod:`~dsd_lab.experiments.cv`, :mod:`~dsd_lab.experiments.ablation` and the demo lay their runs out alike, so
that a run one of them finished is reused by the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsd_lab.experiments.runs import run_experiment
from dsd_lab.experiments.tables import write_comparison_tables
from dsd_lab.experiments.tracking import tracking_settings

__all__ = ["as_list", "experiment_overrides", "run_study", "study_run_dir", "write_study_table"]


def as_list(value: Any) -> list:
    """A CLI list option as a list: ``"0,1,2"``, ``(0, 1, 2)`` (what fire makes of ``0,1,2``) or one value."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def experiment_overrides(
    dataset_dir: str | os.PathLike, ablation: str | None, fold: int | None, **overrides: Any
) -> dict:
    """The overrides of one run, built alike by every study command so that their runs can be shared.

    Args:
        dataset_dir: the dataset; made absolute.
        ablation: the paper's ablation row (Basic, DS, SDD, SDE, DSD), or ``None`` for a run whose strategy
            file replaces the DSD loss (``strategy_emkd.json``).
        fold: the cross-validation fold, or ``None`` for bundles with a fixed split.
        overrides: any other config ids and values.
    """
    settings = {**overrides, "dataset_dir": str(Path(dataset_dir).resolve())}
    if ablation is not None:
        settings["ablation"] = ablation
    if fold is not None:
        settings["fold"] = int(fold)
    return settings


def study_run_dir(work_dir: str | os.PathLike, ablation: str, fold: int | None) -> Path:
    """The run folder of one ablation row on one fold: ``WORK_DIR/<row>/fold_<k>``, ``WORK_DIR/<row>`` without folds."""
    return Path(work_dir) / ablation / f"fold_{fold}" if fold is not None else Path(work_dir) / ablation


def run_study(
    bundle_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    ablation: str,
    fold: int | None,
    dataset_dir: str | os.PathLike,
    overrides: Mapping[str, Any],
    config_files: Sequence[str] = (),
    tracking: str | None = None,
    row: str | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """One run of a study: :func:`~dsd_lab.experiments.runs.run_experiment` in :func:`study_run_dir`.

    Args:
        bundle_dir: the bundle root.
        work_dir: the study's work folder.
        ablation: the paper's ablation row (Basic, DS, SDD, SDE, DSD).
        fold: the cross-validation fold, or ``None`` for bundles with a fixed split.
        dataset_dir: the dataset.
        overrides: any other config ids and values.
        config_files: extra config files of the bundle, see :func:`~dsd_lab.experiments.runs.run_experiment`.
        tracking: ``None`` or ``"mlflow"``: one MLflow run named after the run folder, in ``work_dir``.
        row: the name of the run's folder, when a study's row is more than its ablation row (``DMD``); the
            ablation row's name by default.

    Returns:
        The run's results, see :func:`~dsd_lab.experiments.runs.run_experiment`.
    """
    run_dir = study_run_dir(work_dir, row or ablation, fold)
    return run_experiment(
        bundle_dir,
        run_dir,
        experiment_overrides(dataset_dir, ablation, fold, **overrides),
        config_files=config_files,
        tracking=tracking_settings(tracking, bundle_dir, work_dir, run_dir.relative_to(work_dir).as_posix()),
    )


def write_study_table(
    results: Mapping[str, Any],
    work_dir: str | os.PathLike,
    stem: str,
    fold: int | None,
    title: str,
    name_column: str,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    detail: str = "",
) -> str:
    """Write a study's comparison table as ``WORK_DIR/<stem>[_fold<k>].csv`` and ``.md``, and print it.

    Args:
        results: results by row name, in row order.
        work_dir: the study's work folder.
        stem: the file name without the fold and extension.
        fold: the fold the rows were evaluated on, or ``None`` for the test split of a fixed split.
        title: what the table compares, e.g. ``"Ablation on dsd_unetr_mmwhs"``.
        name_column: the title of the first column.
        settings: extra columns by row name, see :func:`~dsd_lab.experiments.tables.write_comparison_tables`.
        detail: more about the figures, appended to the printed heading.

    Returns:
        The Markdown table.
    """
    work = Path(work_dir)
    stem = stem if fold is None else f"{stem}_fold{fold}"
    table = write_comparison_tables(results, work, stem, name_column=name_column, settings=settings)
    where = "the test split" if fold is None else f"fold {fold}"
    print(f"\n{title}, {where} (mean ± std over cases{detail}):\n\n{table}")
    print(f"Tables: {work / stem}.csv, {work / stem}.md")
    return table
