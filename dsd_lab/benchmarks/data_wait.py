"""Share of training time spent waiting for batches, in a bundle's real training loop.

Usage::

    dsd-data-wait BUNDLE_DIR --dataset_dir DATA [--epochs 2] [--settings "[[1.0, 0], [0.0, 2]]"]
                                  [--key value ...]

Each setting ``[cache_rate, num_workers]`` runs the bundle's ``train.json`` (validation off) with
Ignite's :class:`~ignite.handlers.time_profilers.BasicTimeProfiler` attached to its trainer, which
times fetching each batch (dataflow) apart from the iteration's processing. Extra ``--key value``
options override the bundle config, e.g. a smaller network for a quick look.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite.handlers.time_profilers import BasicTimeProfiler
from monai.bundle import ConfigWorkflow

from dsd_lab.cli import run_command

__all__ = ["data_wait_share", "main", "measure_data_wait"]

DEFAULT_SETTINGS = ((1.0, 0), (1.0, 2), (0.0, 0), (0.0, 2))


def data_wait_share(
    bundle_dir: str | Path, dataset_dir: str, cache_rate: float, num_workers: int, epochs: int, **overrides: Any
) -> dict[str, float]:
    """Train a bundle for a few epochs and time its data loading against its processing.

    Args:
        bundle_dir: the bundle root holding ``configs/train.json``.
        dataset_dir: the bundle's ``dataset_dir``.
        cache_rate: the bundle's ``cache_rate``.
        num_workers: the bundle's ``num_workers`` (caching threads and loader processes).
        epochs: epochs to train; the first, which fills the cache and starts workers, is included.
        overrides: further config overrides.

    Returns:
        Seconds of dataflow and processing, and the dataflow share of their sum.
    """
    configs = Path(bundle_dir) / "configs"
    with tempfile.TemporaryDirectory() as scratch:
        workflow = ConfigWorkflow(
            config_file=str(configs / "train.json"),
            workflow_type="train",
            bundle_root=scratch,
            dataset_dir=dataset_dir,
            cache_rate=cache_rate,
            num_workers=num_workers,
            max_epochs=epochs,
            val_interval=epochs + 1,
            **overrides,
        )
        workflow.initialize()
        profiler = BasicTimeProfiler()
        profiler.attach(workflow.trainer)
        workflow.run()
        stats = profiler.get_results()
    dataflow = float(stats["dataflow_stats"]["total"])
    processing = float(stats["processing_stats"]["total"])
    return {"dataflow_s": dataflow, "processing_s": processing, "data_wait_share": dataflow / (dataflow + processing)}


def measure_data_wait(
    bundle_dir: str,
    dataset_dir: str,
    epochs: int = 2,
    settings: Sequence[Sequence[float]] = DEFAULT_SETTINGS,
    **overrides: Any,
) -> list[dict[str, float]]:
    """Print the data-wait share of each ``[cache_rate, num_workers]`` setting.

    Args:
        bundle_dir: the bundle root.
        dataset_dir: the data to train on.
        epochs: epochs per setting.
        settings: ``[cache_rate, num_workers]`` pairs to compare.
        overrides: config overrides applied to every setting.

    Returns:
        One row per setting.
    """
    rows = []
    print("| cache_rate | num_workers | dataflow (s) | processing (s) | data wait |")
    print("|---|---|---|---|---|")
    for cache_rate, num_workers in settings:
        row = {"cache_rate": float(cache_rate), "num_workers": int(num_workers)}
        row.update(data_wait_share(bundle_dir, dataset_dir, float(cache_rate), int(num_workers), epochs, **overrides))
        rows.append(row)
        print(
            f"| {row['cache_rate']:g} | {row['num_workers']} | {row['dataflow_s']:.1f} | "
            f"{row['processing_s']:.1f} | {100 * row['data_wait_share']:.1f} % |",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """``dsd-data-wait``: :func:`measure_data_wait` from the command line."""
    run_command(measure_data_wait, argv, name="dsd-data-wait")


if __name__ == "__main__":
    main()
