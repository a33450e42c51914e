"""End-to-end demo on synthetic MM-WHS data: cross-validation, a Basic vs DSD comparison, and figures.

Usage::

    dsd-demo [--work_dir dsd_demo] [--cases 10] [--epochs 40] [--folds 0,1]

It trains a tiny DSD-UNETR with the bundle on each requested fold (``dsd-cv``, the paper's Table 2),
trains the plain UNETR (Basic) on the first of them (``dsd-ablation``, Table 1), and draws both models'
predictions on one validation scan beside the ground truth, and the DSD run's training curves
(``dsd-figures``, which needs the ``figures`` extra).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from custom.mmwhs import fold_datalists
from dsd_lab.bundles import BUNDLES_DIR
from dsd_lab.cli import run_command
from dsd_lab.data.synthetic_mmwhs import make_mmwhs
from dsd_lab.experiments.ablation import ablation_study
from dsd_lab.experiments.cv import cross_validate
from dsd_lab.experiments.study import as_list, study_run_dir

__all__ = ["BUNDLE_DIR", "DEMO_UNETR", "demo", "main"]

BUNDLE_DIR = BUNDLES_DIR / "dsd_unetr_mmwhs"

#: Overrides that shrink the bundle's UNETR and pipeline to run in minutes on a CPU.
DEMO_UNETR: dict[str, Any] = {
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


def _draw_figures(run_dir: Path, data_dir: Path, fold: int, rows: list[str]) -> list[Path]:
    from dsd_lab.figures.curves import training_curves
    from dsd_lab.figures.segmentation import dataset_label_names, segmentation_figure

    case = fold_datalists(data_dir, fold)["validation"][0]
    stem = Path(case["image"]).name.removesuffix(".nii.gz")
    predictions = {
        row: study_run_dir(run_dir, row, fold) / "eval" / "predictions" / f"{stem}_seg.nii.gz" for row in rows
    }
    figures = run_dir / "figures"
    try:
        slice_png, _ = segmentation_figure(
            case["image"], case["label"], predictions, figures / f"fold{fold}_{stem}.png", dataset_label_names("mmwhs")
        )
        dsd_eval = study_run_dir(run_dir, "DSD", fold) / "eval"
        curves_png = training_curves(dsd_eval, figures / f"fold{fold}_DSD_curves.png")
    except ImportError as error:  # matplotlib is the optional "figures" extra
        print(f"\nNo figures: {error}")
        return []
    return [Path(slice_png), Path(curves_png)]


def demo(work_dir: str = "dsd_demo", cases: int = 10, epochs: int = 40, folds: Any = (0, 1), seed: int = 0) -> str:
    """Generate synthetic MM-WHS data, cross-validate a tiny DSD-UNETR, compare it with Basic, draw figures.

    The synthetic data in ``WORK_DIR/data`` is reused by later runs; each run writes its runs, tables and
    figures into a new ``WORK_DIR/run-<timestamp>`` folder, so nothing earlier is overwritten.

    Args:
        work_dir: folder for the data and the runs.
        cases: number of synthetic cases (5 folds: each fold validates on a fifth of them).
        epochs: training epochs of every run.
        folds: the cross-validation folds to run; Basic is trained on the first.
        seed: seed of the data and of training.

    Returns:
        The cross-validation table, also printed.
    """
    work = Path(work_dir).resolve()
    data_dir = work / "data"
    if not any(data_dir.glob("ct_train_*_image.nii.gz")):
        make_mmwhs(data_dir, cases=cases, seed=seed)
    run_dir = _new_run_dir(work)
    fold_list = [int(fold) for fold in as_list(folds)]
    overrides = {**DEMO_UNETR, "max_epochs": epochs, "val_interval": max(1, epochs // 4), "seed": seed}
    started = time.perf_counter()
    table = cross_validate(str(BUNDLE_DIR), str(data_dir), folds=fold_list, work_dir=str(run_dir), **overrides)
    rows = ["Basic", "DSD"]
    ablation_study(str(BUNDLE_DIR), str(data_dir), fold=fold_list[0], rows=rows, work_dir=str(run_dir), **overrides)
    figures = _draw_figures(run_dir, data_dir, fold_list[0], rows)
    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s. Runs, tables and figures: {run_dir}")
    for figure in figures:
        print(f"Figure: {figure}")
    return table


def main(argv: list[str] | None = None) -> None:
    """``dsd-demo``: :func:`demo` from the command line."""
    run_command(demo, argv, name="dsd-demo")


if __name__ == "__main__":
    main()
