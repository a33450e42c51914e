"""End-to-end demo on synthetic MM-WHS data: cross-validation, a Basic vs DSD comparison, and figures.

Usage::

    dsd-demo [--work_dir dsd_demo] [--cases 10] [--epochs 80] [--folds 0,1] [--verbose] [--any_config_id value]

It trains a tiny DSD-UNETR with the bundle on each requested fold (``dsd-cv``, the paper's Table 2),
trains the plain UNETR (Basic) on the first of them (``dsd-ablation``, Table 1), and draws both models'
predictions on one validation scan beside the ground truth, and the DSD run's training curves with the
validation Dice of every auxiliary head (``dsd-figures``, which needs the ``figures`` extra). The console shows a
few lines per stage and a progress bar per epoch; each run's whole log is its ``log.txt`` (``--verbose`` shows it
on the console instead).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from custom.mmwhs import fold_datalists
from custom.progress import format_seconds
from dsd_lab.bundles import BUNDLES_DIR
from dsd_lab.cli import run_command
from dsd_lab.data.synthetic_mmwhs import make_mmwhs
from dsd_lab.experiments.ablation import ablation_study
from dsd_lab.experiments.cv import cross_validate
from dsd_lab.experiments.study import as_list, study_run_dir

__all__ = ["BUNDLE_DIR", "DEMO_OVERRIDES", "demo", "main"]

BUNDLE_DIR = BUNDLES_DIR / "dsd_unetr_mmwhs"

#: The bundle's settings for the demo: a tiny UNETR and pipeline that train in minutes on a CPU, and what lets
#: such a model learn every structure, the small ones too, in that budget: crops centred on each class in turn
#: (the bundle's ``class_balanced_crops``; real runs keep the paper's foreground crops), 32³ crops (48 mm, a
#: structure with its neighbours), two per volume so that the budget buys more optimiser steps, and a learning
#: rate that decays to 0 over the run (nnU-Net's polynomial schedule). Validation also scores every auxiliary
#: head, for the curves figure.
DEMO_OVERRIDES: dict[str, Any] = {
    "roi_size": [32, 32, 32],
    "feature_size": 8,
    "hidden_size": 96,
    "mlp_dim": 192,
    "num_heads": 4,
    "num_samples": 2,
    "class_balanced_crops": True,
    "learning_rate": 0.003,
    "lr_scheduler": {
        "_target_": "torch.optim.lr_scheduler.PolynomialLR",
        "optimizer": "@optimizer",
        "total_iters": "@max_epochs",
        "power": 0.9,
    },
    "score_heads": True,
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


def demo(
    work_dir: str = "dsd_demo", cases: int = 10, epochs: int = 80, folds: Any = (0, 1), seed: int = 0, **overrides: Any
) -> str:
    """Generate synthetic MM-WHS data, cross-validate a tiny DSD-UNETR, compare it with Basic, draw figures.

    The synthetic data in ``WORK_DIR/data`` is reused by later runs; each run writes its runs, tables and
    figures into a new ``WORK_DIR/run-<timestamp>`` folder, so nothing earlier is overwritten.

    Args:
        work_dir: folder for the data and the runs.
        cases: number of synthetic cases (5 folds: each fold validates on a fifth of them).
        epochs: training epochs of every run.
        folds: the cross-validation folds to run; Basic is trained on the first.
        seed: seed of the data and of training.
        overrides: any other config id and value of the bundle, over :data:`DEMO_OVERRIDES`.

    Returns:
        The cross-validation table, also printed.
    """
    started = time.perf_counter()
    work = Path(work_dir).resolve()
    data_dir = work / "data"
    print(f"dsd-demo: the paper's protocol at toy size, through {BUNDLE_DIR}", flush=True)
    existing = sorted(data_dir.glob("ct_train_*_image.nii.gz"))
    if existing:
        print(f"Data: {len(existing)} synthetic MM-WHS cases in {data_dir}, written by an earlier run", flush=True)
    else:
        make_mmwhs(data_dir, cases=cases, seed=seed)
    run_dir = _new_run_dir(work)
    print(f"Runs, tables and figures: {run_dir} (each run's whole log is its log.txt)", flush=True)
    fold_list = [int(fold) for fold in as_list(folds)]
    schedule = {"max_epochs": epochs, "val_interval": max(1, epochs // 4), "seed": seed}
    overrides = {**DEMO_OVERRIDES, **schedule, **overrides}

    folds_text = ", ".join(map(str, fold_list))
    print(f"\n[1/3] DSD cross-validation on fold(s) {folds_text}, {epochs} epochs each (Table 2)", flush=True)
    table = cross_validate(str(BUNDLE_DIR), str(data_dir), folds=fold_list, work_dir=str(run_dir), **overrides)
    rows = ["Basic", "DSD"]
    print(f"\n[2/3] Basic (the plain UNETR) against DSD on fold {fold_list[0]} (Table 1)", flush=True)
    ablation_study(str(BUNDLE_DIR), str(data_dir), fold=fold_list[0], rows=rows, work_dir=str(run_dir), **overrides)
    print("\n[3/3] Figures", flush=True)
    figures = _draw_figures(run_dir, data_dir, fold_list[0], rows)
    for figure in figures:
        print(f"Figure: {figure}")
    print(f"\nDemo finished in {format_seconds(time.perf_counter() - started)}. Runs, tables and figures: {run_dir}")
    return table


def main(argv: list[str] | None = None) -> None:
    """``dsd-demo``: :func:`demo` from the command line."""
    run_command(demo, argv, name="dsd-demo")


if __name__ == "__main__":
    main()
