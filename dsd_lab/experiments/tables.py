"""The paper's result tables as CSV and Markdown: cross-validation (Table 2) and model comparisons (Tables 1, 3).

Results come as :mod:`dsd_lab.experiments.results` describes them:
``{"dice"|"hd95": {class name or "mean": {"mean": value, "std": value}}}``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cv_summary", "format_cell", "write_comparison_tables", "write_cv_tables"]

Results = Mapping[str, Mapping[str, Mapping[str, float]]]
_METRIC_TITLES = {"dice": "Dice", "hd95": "HD95 (mm)"}
_DIGITS = {"dice": 3, "hd95": 2}


def format_cell(mean: float, std: float, digits: int) -> str:
    """``"mean ± std"`` with ``digits`` decimals, or ``"n/a"`` where the mean is not a number."""
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def _classes(results: Results) -> list[str]:
    return list(results["dice"])


def cv_summary(fold_results: Mapping[int, Results]) -> list[dict[str, Any]]:
    """Mean and standard deviation over folds of each fold's mean Dice and HD95, per class and overall.

    A fold whose value is NaN for a class (MetricsSaver's mark for no case with a value, e.g. HD95 when a
    class was never predicted) is left out of that class's figures; ``*_folds`` counts the folds used.

    Args:
        fold_results: results by fold index.

    Returns:
        One row per class plus ``mean``: ``class, dice_mean, dice_std, dice_folds, hd95_mean, hd95_std,
        hd95_folds``. Standard deviations are population ones (``numpy.std``), as in MONAI's summaries.
    """
    first = next(iter(fold_results.values()))
    rows = []
    for name in _classes(first):
        row: dict[str, Any] = {"class": name}
        for metric in _METRIC_TITLES:
            values = np.array([results[metric][name]["mean"] for results in fold_results.values()], dtype=float)
            finite = values[np.isfinite(values)]
            row[f"{metric}_mean"] = float(finite.mean()) if finite.size else math.nan
            row[f"{metric}_std"] = float(finite.std()) if finite.size else math.nan
            row[f"{metric}_folds"] = int(finite.size)
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_cv_tables(fold_results: Mapping[int, Results], out_dir: str | os.PathLike) -> str:
    """Write ``cv_folds.csv`` (each fold's means), ``cv_summary.csv`` and ``cv_summary.md`` (Table 2 style).

    Args:
        fold_results: results by fold index.
        out_dir: the folder to write into; created if missing.

    Returns:
        The Markdown table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_fold = [
        {"fold": fold, "class": name, **{metric: results[metric][name]["mean"] for metric in _METRIC_TITLES}}
        for fold, results in sorted(fold_results.items())
        for name in _classes(results)
    ]
    _write_csv(out / "cv_folds.csv", per_fold)
    summary = cv_summary(dict(sorted(fold_results.items())))
    _write_csv(out / "cv_summary.csv", summary)
    folds = ", ".join(str(fold) for fold in sorted(fold_results))
    header = ["class", *(f"{title}, mean ± std over folds" for title in _METRIC_TITLES.values())]
    cells = [
        [row["class"], *(format_cell(row[f"{m}_mean"], row[f"{m}_std"], _DIGITS[m]) for m in _METRIC_TITLES)]
        for row in summary
    ]
    table = f"Cross-validation over folds {folds}\n\n" + _markdown(header, cells)
    (out / "cv_summary.md").write_text(table)
    return table


def write_comparison_tables(
    results_by_name: Mapping[str, Results],
    out_dir: str | os.PathLike,
    stem: str,
    name_column: str = "model",
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Write ``<stem>.csv`` and ``<stem>.md``: one row a model, Dice and HD95 per class and their mean.

    This is the layout of the paper's ablation (Table 1) and BraTS (Table 3) tables; cells are mean ± std over
    the evaluated cases.

    Args:
        results_by_name: results by model name, in row order.
        out_dir: the folder to write into; created if missing.
        stem: the file name without extension.
        name_column: the title of the first column.
        settings: extra columns by model name, such as the loss weights of each ablation row.

    Returns:
        The Markdown table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or {}
    setting_names = list(next(iter(settings.values()))) if settings else []
    classes = _classes(next(iter(results_by_name.values())))
    csv_rows, cells = [], []
    for name, results in results_by_name.items():
        row: dict[str, Any] = {name_column: name, **settings.get(name, {})}
        line = [name, *(str(settings.get(name, {}).get(key, "")) for key in setting_names)]
        for metric in _METRIC_TITLES:
            for cls in classes:
                value = results[metric][cls]
                row[f"{metric}_{cls}_mean"], row[f"{metric}_{cls}_std"] = value["mean"], value["std"]
                line.append(format_cell(value["mean"], value["std"], _DIGITS[metric]))
        csv_rows.append(row)
        cells.append(line)
    _write_csv(out / f"{stem}.csv", csv_rows)
    header = [name_column, *setting_names]
    header += [f"{title} {cls}" for title in _METRIC_TITLES.values() for cls in classes]
    table = _markdown(header, cells)
    (out / f"{stem}.md").write_text(table)
    return table
