"""Evaluate trained runs of a bundle and compare them in one table (the paper's Table 3 for BraTS).

Usage::

    dsd-report BUNDLE_DIR --runs "{'UNETR': 'runs/Basic', 'DSD-UNETR': 'runs/DSD'}" [--out_dir report]
        [--dataset_dir DATA --configs ... --any_config_id value]   # for runs trained with MONAI's CLI

A run folder is where a training wrote ``models/model.pt`` (its ``ckpt_dir`` is ``RUN/models``): a bundle root
trained with MONAI's CLI, or a run folder of ``dsd-cv`` / ``dsd-ablation``. Each run is evaluated
with the bundle's evaluate.json into ``RUN/eval`` (for BraTS on the test split, WT / TC / ET regions); a run
evaluated before with the same settings is not evaluated again. The table goes to ``OUT_DIR/report.csv`` and
``OUT_DIR/report.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dsd_lab.cli import run_command
from dsd_lab.experiments.records import RECORD_FILE, read_record
from dsd_lab.experiments.runs import run_experiment
from dsd_lab.experiments.study import as_list
from dsd_lab.experiments.tables import write_comparison_tables

__all__ = ["main", "report"]


def _evaluate(bundle_dir: str, run_dir: str, dataset_dir: str | None, configs: Any, overrides: dict) -> Any:
    record = read_record(run_dir)
    if record is None:
        if dataset_dir is None:
            raise ValueError(f"{run_dir} was not trained by dsd-cv or dsd-ablation: give --dataset_dir.")
        settings = {**overrides, "dataset_dir": str(Path(dataset_dir).resolve())}
        return run_experiment(bundle_dir, run_dir, settings, config_files=as_list(configs), train=False)
    if overrides or configs:
        raise ValueError(
            f"{Path(run_dir) / RECORD_FILE} records the run's own settings, which its evaluation uses; "
            "drop the extra options for it or evaluate it with the bundle's CLI."
        )
    return run_experiment(record["bundle"], run_dir, record["overrides"], record["config_files"], train=False)


def report(
    bundle_dir: str,
    runs: Mapping[str, str],
    dataset_dir: str | None = None,
    out_dir: str = "report",
    configs: Any = (),
    **overrides: Any,
) -> str:
    """Evaluate each trained run and write the comparison table.

    Args:
        bundle_dir: the bundle root.
        runs: row name -> run folder holding ``models/model.pt``, in table order.
        dataset_dir: the dataset, as the bundle's ``--dataset_dir``; runs of ``dsd-cv`` or
            ``dsd-ablation`` use the dataset and settings recorded in their folder instead.
        out_dir: where the table goes.
        configs: extra config files of the bundle merged after its own, e.g. ``backbone_dynunet.json``.
        overrides: any other config id and value for evaluating runs without a record
            (``--evaluate_split validation``, the network sizes they were trained with).

    Returns:
        The Markdown table, also printed.

    Raises:
        ValueError: when ``runs`` is not a mapping or is empty, when a run without a record is given no
            ``dataset_dir``, or when a recorded run is given options of its own.
        FileNotFoundError: when a run folder holds no ``models/model.pt``.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(f"--runs must map row names to run folders, e.g. \"{{'DSD': 'runs/dsd'}}\"; got {runs!r}.")
    for name, run_dir in runs.items():
        checkpoint = Path(run_dir) / "models" / "model.pt"
        if not checkpoint.exists():
            raise FileNotFoundError(f"Run '{name}': {checkpoint} does not exist; train the run first.")
    results = {name: _evaluate(bundle_dir, run_dir, dataset_dir, configs, overrides) for name, run_dir in runs.items()}
    table = write_comparison_tables(results, out_dir, "report")
    print(f"\n{Path(bundle_dir).resolve().name} (mean ± std over cases):\n\n{table}")
    print(f"Tables: {Path(out_dir) / 'report.csv'}, {Path(out_dir) / 'report.md'}")
    return table


def main(argv: list[str] | None = None) -> None:
    """``dsd-report``: :func:`report` from the command line."""
    run_command(report, argv, name="dsd-report")


if __name__ == "__main__":
    main()
