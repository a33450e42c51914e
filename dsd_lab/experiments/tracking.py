"""MLflow tracking settings for experiment runs: one database per work folder, one MLflow run per training run.

The settings are the bundle's own ``configs/mlflow.json``, which ``python -m monai.bundle run ... --tracking
configs/mlflow.json`` uses: MONAI's default MLflow settings (``--tracking mlflow``) with the training loss read
from the DSD trainer's dictionary output, the bundle's hyper-parameters as MLflow parameters, and an evaluation
that ends its MLflow run. Here only the place and the names change: the database is ``WORK_DIR/mlruns.db``, the
experiment is named after the work folder and each run after its run folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["TRACKING_SETTINGS", "bundle_tracking_settings", "mlflow_settings", "tracking_settings"]

#: The MLflow settings file that every bundle ships in its ``configs/`` folder.
TRACKING_SETTINGS = "mlflow.json"


def bundle_tracking_settings(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """The bundle's MLflow settings, ``configs/mlflow.json``, as ``monai.bundle.run(tracking=...)`` takes them.

    Raises:
        FileNotFoundError: the bundle ships no settings file.
    """
    path = Path(bundle_dir) / "configs" / TRACKING_SETTINGS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the bundle ships no MLflow settings for --tracking.")
    return json.loads(path.read_text())


def mlflow_settings(
    bundle_dir: str | os.PathLike, work_dir: str | os.PathLike, experiment_name: str, run_name: str
) -> dict[str, Any]:
    """The bundle's MLflow settings, logging into ``work_dir/mlruns.db`` under one experiment and a named run.

    Args:
        bundle_dir: the bundle root.
        work_dir: the folder of the MLflow database (and of its artifacts, under ``mlruns``).
        experiment_name: the MLflow experiment.
        run_name: the MLflow run, e.g. ``"DSD/fold_0"``.

    Returns:
        A settings dict for ``monai.bundle.run(tracking=...)``.
    """
    from monai.utils import path_to_sqlite_uri

    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = bundle_tracking_settings(bundle_dir)
    configs = settings["configs"]
    configs["tracking_uri"] = path_to_sqlite_uri(str(work / "mlruns.db"))
    configs["experiment_name"] = experiment_name
    configs["run_name"] = run_name
    return settings


def tracking_settings(
    tracking: str | None, bundle_dir: str | os.PathLike, work_dir: str | os.PathLike, run_name: str
) -> dict[str, Any] | None:
    """The ``tracking`` argument of ``monai.bundle.run`` for the experiment CLIs' ``--tracking`` option.

    The MLflow experiment is named after the work folder; the parameters logged are those the bundle's settings
    name.

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
    return mlflow_settings(bundle_dir, work_dir, Path(work_dir).resolve().name, run_name)
