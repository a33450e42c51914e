"""End-to-end demo: synthetic MM-WHS data, DSD training and evaluation through the bundle, per-class Dice table.

Usage::

    python -m custom.demo [--work_dir dsd_demo] [--cases 10] [--epochs 60]
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fire

from custom.data import MMWHS_CLASS_NAMES
from custom.synthetic import make_mmwhs

__all__ = ["BUNDLE_DIR", "TINY_UNETR", "format_metric_table", "main", "run_bundle"]

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundles" / "dsd_unetr_mmwhs"

#: Overrides that shrink the bundle's UNETR and pipeline to run in minutes on a CPU.
TINY_UNETR: dict[str, Any] = {
    "roi_size": [32, 32, 32],
    "feature_size": 8,
    "hidden_size": 96,
    "mlp_dim": 192,
    "num_heads": 4,
    "num_samples": 4,
    "learning_rate": 0.003,
    "lr_step_epochs": 1000,
    "num_workers": 0,
}


def run_bundle(run_id: str, config_files: list[Path], bundle_dir: Path, **overrides: Any) -> None:
    """Run one bundle workflow in this process, exactly as ``python -m monai.bundle run`` does.

    Args:
        run_id: ``"training"`` or ``"evaluating"``.
        config_files: config files, merged in order.
        bundle_dir: the bundle root.
        overrides: config ids and their new values.
    """
    from monai.bundle import run

    configs = [str(bundle_dir / "configs" / name) for name in config_files]
    run(
        run_id,
        config_file=configs,
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        bundle_root=str(bundle_dir),
        **overrides,
    )


def format_metric_table(eval_dir: str | Path, class_names: Mapping[str, str]) -> str:
    """Markdown table of per-class Dice and HD95 (mean ± std over cases) from MONAI ``MetricsSaver`` summaries.

    Args:
        eval_dir: folder holding ``val_mean_dice_summary.csv`` and ``val_hd95_mm_summary.csv``.
        class_names: maps MetricsSaver's row names (``class0``, ..., ``mean``) to display names.
    """
    summaries = {}
    for metric in ("val_mean_dice", "val_hd95_mm"):
        with open(Path(eval_dir) / f"{metric}_summary.csv", newline="") as f:
            summaries[metric] = {row["class"]: row for row in csv.DictReader(f)}
    lines = ["| class | Dice | HD95 (mm) |", "|---|---|---|"]
    for row_name, display in class_names.items():
        cells = [f"{float(s[row_name]['mean']):.3f} ± {float(s[row_name]['std']):.3f}" for s in summaries.values()]
        lines.append(f"| {display} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _new_run_dir(work: Path) -> Path:
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    for attempt in range(1000):
        run_dir = work / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a new run folder under {work}.")


def main(work_dir: str = "dsd_demo", cases: int = 10, epochs: int = 60, seed: int = 0) -> str:
    """Generate synthetic MM-WHS data, train a tiny DSD-UNETR with the bundle, evaluate it, print Dice.

    The synthetic data in ``WORK_DIR/data`` is reused by later runs; each run writes its checkpoints
    and evaluation into a new ``WORK_DIR/run-<timestamp>`` folder, so nothing earlier is overwritten.

    Args:
        work_dir: folder for the data and the runs.
        cases: number of synthetic cases (fold 0 of 5 folds validates on the first fifth).
        epochs: training epochs.
        seed: seed of the data and of training.

    Returns:
        The per-class metric table, also printed.
    """
    work = Path(work_dir).resolve()
    data_dir = work / "data"
    if not any(data_dir.glob("ct_train_*_image.nii.gz")):
        make_mmwhs(data_dir, cases=cases, seed=seed)
    run_dir = _new_run_dir(work)
    overrides = {
        **TINY_UNETR,
        "dataset_dir": str(data_dir),
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "eval"),
        "max_epochs": epochs,
        "val_interval": max(1, epochs // 4),
        "seed": seed,
    }
    started = time.perf_counter()
    run_bundle("training", ["train.json"], BUNDLE_DIR, **overrides)
    run_bundle("evaluating", ["train.json", "evaluate.json"], BUNDLE_DIR, **overrides)
    names = {f"class{i}": name for i, name in enumerate(MMWHS_CLASS_NAMES[1:])}
    table = format_metric_table(run_dir / "eval", {**names, "mean": "mean (foreground)"})
    print(f"\nDSD-UNETR on synthetic MM-WHS, fold 0 validation ({time.perf_counter() - started:.0f} s):\n{table}")
    print(f"\nCheckpoints: {run_dir / 'models'}\nEvaluation:  {run_dir / 'eval'}")
    return table


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)
