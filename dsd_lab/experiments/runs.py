"""Train-then-evaluate runs of a bundle, each in its own folder, resumed or skipped when run again.

A run folder holds ``models/`` (the bundle's ``ckpt_dir``), ``eval/`` (its ``output_dir``), ``log.txt`` (the
bundle's whole log), ``experiment.json`` (:mod:`~dsd_lab.experiments.records`) and, once evaluated, ``results.json``
(:mod:`~dsd_lab.experiments.results`). Running the same experiment again continues an interrupted training from
its last checkpoint (``--resume true``) and skips what is finished.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom.progress import format_seconds
from dsd_lab.bundles import EVALUATE_CONFIG, TRAIN_CONFIG, report_classes, run_bundle
from dsd_lab.experiments.records import start_record, write_record
from dsd_lab.experiments.results import MEAN_ROW, RESULTS_FILE, collect_results, read_results, write_results

__all__ = ["LOG_FILE", "run_experiment"]

#: The whole log of a run's training and evaluation, in its folder; the console shows warnings and progress.
LOG_FILE = "log.txt"
#: The checkpoints a training writes in ``models/``: the best by validation, and the last.
BEST_MODEL, FINAL_MODEL = "model.pt", "model_final.pt"


def run_experiment(
    bundle_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    overrides: Mapping[str, Any],
    config_files: Sequence[str] = (),
    tracking: Any = None,
    train: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """Train a bundle into ``run_dir`` and evaluate it there, doing only what earlier calls left undone.

    Args:
        bundle_dir: the bundle root.
        run_dir: the run's folder; created if missing.
        overrides: config ids and values for both training and evaluation (``dataset_dir``, ``fold``, ...).
        config_files: extra config files of the bundle merged after train.json (and evaluate.json), such as a
            backbone override.
        tracking: MONAI's experiment tracking for the training (``None``, ``"mlflow"`` or a settings dict).
        train: ``False`` evaluates a run folder that already holds ``models/model.pt``.

    Returns:
        ``{"dice"|"hd95": {class name or "mean": {"mean": value, "std": value}}}``: mean and standard deviation
        over the evaluated cases, also written to ``run_dir/results.json``.

    Raises:
        ValueError: when ``run_dir`` holds a run started with other settings.
    """
    bundle_dir, run_dir = Path(bundle_dir).resolve(), Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {"bundle": str(bundle_dir), "config_files": list(config_files), "overrides": dict(overrides)}
    record = start_record(run_dir, settings)
    if record["evaluated"] and (run_dir / RESULTS_FILE).exists():
        print(f"  finished before: results read from {run_dir / RESULTS_FILE}", flush=True)
        return read_results(run_dir)
    bundle_overrides = {
        **overrides,
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "eval"),
        "log_file": run_dir / LOG_FILE,
    }
    print(f"  log: {run_dir / LOG_FILE}", flush=True)
    if train and not record["trained"]:
        resume = (run_dir / "models" / "resume.pt").exists()
        started = time.perf_counter()
        print(f"  {'resuming' if resume else 'training'} ...", flush=True)
        run_bundle("training", [TRAIN_CONFIG, *config_files], bundle_dir, tracking, resume=resume, **bundle_overrides)
        print(f"  trained in {format_seconds(time.perf_counter() - started)}", flush=True)
        record["trained"] = True
        write_record(run_dir, record)
    models = run_dir / "models"
    if "ckpt_file" not in overrides and not (models / BEST_MODEL).exists() and (models / FINAL_MODEL).exists():
        print(f"  no validation ran, so no best model: evaluating the last one, {models / FINAL_MODEL}", flush=True)
        bundle_overrides["ckpt_file"] = str(models / FINAL_MODEL)
    started = time.perf_counter()
    run_bundle("evaluating", [TRAIN_CONFIG, EVALUATE_CONFIG, *config_files], bundle_dir, **bundle_overrides)
    results = collect_results(run_dir / "eval", report_classes(bundle_dir))
    mean_dice = results["dice"][MEAN_ROW]["mean"]
    print(f"  evaluated in {format_seconds(time.perf_counter() - started)}: mean Dice {mean_dice:.3f}", flush=True)
    write_results(run_dir, results)
    record["evaluated"] = True
    write_record(run_dir, record)
    return results
