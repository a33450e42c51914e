"""MLflow tracking settings for experiment runs: one database per work folder, one MLflow run per training run.

The settings follow MONAI's ``monai.bundle.run(..., tracking=settings)`` format and extend its default
(``--tracking mlflow``), which logs the training loss, the trainer's epoch metrics (every DSD loss term) and the
validation metrics, with the run's name and the bundle's hyper-parameters as MLflow parameters.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsd_lab.bundles import bundle_config

__all__ = ["TRACKED_PARAMETERS", "mlflow_settings", "tracking_settings"]

#: Config ids logged as MLflow parameters where the bundle defines them.
TRACKED_PARAMETERS: tuple[str, ...] = (
    "ablation",
    "eta",
    "alpha1",
    "alpha2",
    "tau",
    "detach_teacher",
    "fold",
    "num_folds",
    "split_seed",
    "labelled_fraction",
    "labelled_seed",
    "seed",
    "roi_size",
    "feature_size",
    "learning_rate",
    "weight_decay",
    "max_epochs",
    "batch_size",
    "num_samples",
    "dataset_dir",
)


def mlflow_settings(
    work_dir: str | os.PathLike, experiment_name: str, run_name: str, parameter_ids: Sequence[str] = ()
) -> dict[str, Any]:
    """MONAI tracking settings that log into ``work_dir/mlruns.db`` under one experiment and a named run.

    Args:
        work_dir: the folder of the MLflow database (and of its artifacts, under ``mlartifacts``).
        experiment_name: the MLflow experiment.
        run_name: the MLflow run, e.g. ``"DSD/fold_0"``.
        parameter_ids: config ids of the bundle to log as MLflow parameters; each must be defined.

    Returns:
        A settings dict for ``monai.bundle.run(tracking=...)``.
    """
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
    from monai.utils import path_to_sqlite_uri

    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    configs = settings["configs"]
    configs["tracking_uri"] = path_to_sqlite_uri(str(work / "mlruns.db"))
    configs["experiment_name"] = experiment_name
    configs["run_name"] = run_name
    # MONAI's default, from_engine(['loss'], first=True), gives a 1-tuple for this trainer's dict output
    configs["trainer"]["output_transform"] = "$lambda output: output['loss']"
    configs["trainer"]["experiment_param"] = {pid: f"@{pid}" for pid in parameter_ids}
    for engine in ("trainer", "validator"):
        configs[engine]["artifact_location"] = str(work / "mlartifacts")
    return settings


def tracking_settings(
    tracking: str | None, bundle_dir: str | os.PathLike, work_dir: str | os.PathLike, run_name: str
) -> dict[str, Any] | None:
    """The ``tracking`` argument of ``monai.bundle.run`` for the experiment CLIs' ``--tracking`` option.

    The MLflow experiment is named after the work folder, and every id of :data:`TRACKED_PARAMETERS` that the
    bundle's train.json defines is logged as a parameter.

    Args:
        tracking: ``None`` (no tracking) or ``"mlflow"``.
        bundle_dir: the bundle root.
        work_dir: see :func:`mlflow_settings`.
        run_name: see :func:`mlflow_settings`.

    Raises:
        ValueError: for another tracking name.
    """
    if tracking is None:
        return None
    if str(tracking).lower() != "mlflow":
        raise ValueError(f"--tracking {tracking!r} is not supported; use 'mlflow' or leave it out.")
    parser = bundle_config(bundle_dir)
    present = [pid for pid in TRACKED_PARAMETERS if pid in parser]
    return mlflow_settings(work_dir, Path(work_dir).resolve().name, run_name, present)
