"""A run's evaluation results, read from the summaries that MONAI's ``MetricsSaver`` writes.

Results are ``{"dice"|"hd95": {class name or "mean": {"mean": value, "std": value}}}``: mean and standard
deviation over the evaluated cases.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from custom.files import atomic_write_json

__all__ = ["METRICS", "RESULTS_FILE", "collect_results", "read_results", "write_results"]

#: The evaluation's metric files (MONAI ``MetricsSaver`` names) by the name the reports give them.
METRICS: dict[str, str] = {"dice": "val_mean_dice", "hd95": "val_hd95_mm"}
RESULTS_FILE = "results.json"
#: MetricsSaver's summary row of the mean over classes.
MEAN_ROW = "mean"


def _read_summary(path: Path) -> dict[str, dict[str, float]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the evaluation did not write its metric summary.")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "class" not in rows[0]:
        raise ValueError(f"{path} is not a MetricsSaver summary (no 'class' column).")
    return {row["class"]: {"mean": float(row["mean"]), "std": float(row["std"])} for row in rows}


def collect_results(eval_dir: str | os.PathLike, classes: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """The results of an evaluation folder.

    Args:
        eval_dir: the evaluation's ``output_dir``, holding ``<metric>_summary.csv`` with one row per class, named
            as the bundles' evaluation names them (``lv_myocardium``, ``WT``, ``anterior``), and the ``mean`` row.
        classes: the names of the evaluated classes, in table order.

    Raises:
        FileNotFoundError: a summary is missing.
        ValueError: a summary is not a MetricsSaver summary or lacks a class.
    """
    results = {}
    for metric, file_stem in METRICS.items():
        summary_path = Path(eval_dir) / f"{file_stem}_summary.csv"
        summary = _read_summary(summary_path)
        expected = [*classes, MEAN_ROW]
        missing = [row for row in expected if row not in summary]
        if missing:
            raise ValueError(
                f"{summary_path} lacks the rows {missing}: it has {list(summary)}. An evaluation by an older bundle "
                "names classes class0, class1, ...: evaluate the run again."
            )
        results[metric] = {row: summary[row] for row in expected}
    return results


def write_results(run_dir: str | os.PathLike, results: dict) -> None:
    """Write a run's results to ``run_dir/results.json``, atomically."""
    atomic_write_json(Path(run_dir) / RESULTS_FILE, results)


def read_results(run_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, float]]]:
    """The results of a finished run, as :func:`dsd_lab.experiments.runs.run_experiment` returns them.

    Raises:
        FileNotFoundError: when the run has not finished its evaluation.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the run in {run_dir} has not finished its evaluation.")
    with open(path) as f:
        return json.load(f)
