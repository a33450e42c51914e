"""Train-then-evaluate runs of a bundle, each in its own folder, resumed or skipped when run again.

A run folder holds ``models/`` (the bundle's ``ckpt_dir``), ``eval/`` (its ``output_dir``) and
``experiment.json``, which records the bundle, config files and overrides the run was started with and how
far it got. Running the same experiment again continues an interrupted training from its last checkpoint
(``--resume true``), skips what is finished, and refuses settings that differ from the recorded ones rather
than mixing two experiments in one folder.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS",
    "as_list",
    "bundle_config",
    "default_value",
    "experiment_overrides",
    "RECORD_FILE",
    "TRAIN_CONFIG",
    "EVALUATE_CONFIG",
    "bundle_has_folds",
    "read_record",
    "read_results",
    "report_classes",
    "run_bundle",
    "run_experiment",
    "run_study",
    "study_run_dir",
]

#: The evaluation's metric files (MONAI ``MetricsSaver`` names) by the name the reports give them.
METRICS: dict[str, str] = {"dice": "val_mean_dice", "hd95": "val_hd95_mm"}
RECORD_FILE = "experiment.json"
RESULTS_FILE = "results.json"
TRAIN_CONFIG = "train.json"
EVALUATE_CONFIG = "evaluate.json"
#: MetricsSaver's summary row of the mean over classes.
MEAN_ROW = "mean"


def run_bundle(
    run_id: str, config_files: Sequence[str], bundle_dir: str | os.PathLike, tracking: Any = None, **overrides: Any
) -> None:
    """Run one bundle workflow in this process, exactly as ``python -m monai.bundle run`` does.

    Args:
        run_id: ``"training"`` or ``"evaluating"``.
        config_files: config file names in the bundle's ``configs/`` folder, merged in order.
        bundle_dir: the bundle root.
        tracking: MONAI's experiment tracking: ``None``, ``"mlflow"`` or a settings dict.
        overrides: config ids and their new values.
    """
    from monai.bundle import run

    configs = Path(bundle_dir) / "configs"
    run(
        run_id,
        config_file=[str(configs / name) for name in config_files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        bundle_root=str(bundle_dir),
        tracking=tracking,
        **overrides,
    )


def bundle_config(bundle_dir: str | os.PathLike, config_files: Sequence[str] = (TRAIN_CONFIG,)):
    """A ``monai.bundle.ConfigParser`` holding the bundle's config files, merged in order, unparsed."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(bundle_dir) / "configs" / name) for name in config_files])
    return parser


def bundle_has_folds(bundle_dir: str | os.PathLike) -> bool:
    """Whether the bundle's training splits its data into cross-validation folds (a ``fold`` config id)."""
    return "fold" in bundle_config(bundle_dir)


def report_classes(bundle_dir: str | os.PathLike) -> list[str]:
    """Names of the evaluated classes (or regions), in the order of MetricsSaver's ``class0, class1, ...`` rows.

    Raises:
        KeyError: when the bundle's evaluate.json does not define ``report_classes``.
    """
    bundle_dir = Path(bundle_dir)
    parser = bundle_config(bundle_dir, [TRAIN_CONFIG, EVALUATE_CONFIG])
    if "report_classes" not in parser:
        raise KeyError(f"{bundle_dir / 'configs' / EVALUATE_CONFIG} defines no 'report_classes'.")
    return [str(name) for name in parser.get_parsed_content("report_classes")]


def _write_json_atomically(path: Path, content: Mapping) -> None:
    # A run killed while writing must leave the previous record, never half of one.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        json.dump(content, f, indent=4)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def _comparable(value: Any) -> Any:
    # Round-trip through JSON so that tuples from fire compare equal to the lists read back from a record.
    return json.loads(json.dumps(value))


def _start_record(run_dir: Path, settings: dict) -> dict:
    record_path = run_dir / RECORD_FILE
    if not record_path.exists():
        record = {**settings, "trained": False, "evaluated": False}
        _write_json_atomically(record_path, record)
        return record
    with open(record_path) as f:
        record = json.load(f)
    now = _comparable(settings)
    differences = [
        f"{key}: {record.get(key)!r} there, {value!r} now"
        for key, value in now.items()
        if key != "overrides" and record.get(key) != value
    ]
    recorded, requested = record.get("overrides", {}), now["overrides"]
    differences += [
        f"{key}: {recorded.get(key, '(not set)')!r} there, {requested.get(key, '(not set)')!r} now"
        for key in sorted(set(recorded) | set(requested))
        if recorded.get(key) != requested.get(key)
    ]
    if differences:
        raise ValueError(
            f"{record_path} records a run with other settings ({'; '.join(differences)}). "
            "Use another work folder, or delete that run folder to start it again."
        )
    return record


def _read_summary(path: Path) -> dict[str, dict[str, float]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the evaluation did not write its metric summary.")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "class" not in rows[0]:
        raise ValueError(f"{path} is not a MetricsSaver summary (no 'class' column).")
    return {row["class"]: {"mean": float(row["mean"]), "std": float(row["std"])} for row in rows}


def _collect_results(eval_dir: Path, classes: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """``{metric: {class name or "mean": {"mean": .., "std": ..}}}`` over the evaluated cases."""
    results = {}
    for metric, file_stem in METRICS.items():
        summary_path = eval_dir / f"{file_stem}_summary.csv"
        summary = _read_summary(summary_path)
        expected = [f"class{i}" for i in range(len(classes))] + [MEAN_ROW]
        missing = [row for row in expected if row not in summary]
        if missing:
            raise ValueError(f"{summary_path} lacks the rows {missing} for the classes {list(classes)}.")
        names = {f"class{i}": name for i, name in enumerate(classes)}
        results[metric] = {names.get(row, row): summary[row] for row in expected}
    return results


def read_record(run_dir: str | os.PathLike) -> dict | None:
    """The settings and progress recorded in a run folder by :func:`run_experiment`, or ``None`` if it has none."""
    path = Path(run_dir) / RECORD_FILE
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def read_results(run_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, float]]]:
    """The metrics of a finished run, as :func:`run_experiment` returns them.

    Raises:
        FileNotFoundError: when the run has not finished its evaluation.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the run in {run_dir} has not finished its evaluation.")
    with open(path) as f:
        return json.load(f)


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
    record = _start_record(run_dir, settings)
    if record["evaluated"] and (run_dir / RESULTS_FILE).exists():
        return read_results(run_dir)
    bundle_overrides = {
        **overrides,
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "eval"),
    }
    if train and not record["trained"]:
        resume = (run_dir / "models" / "resume.pt").exists()
        run_bundle("training", [TRAIN_CONFIG, *config_files], bundle_dir, tracking, resume=resume, **bundle_overrides)
        record["trained"] = True
        _write_json_atomically(run_dir / RECORD_FILE, record)
    run_bundle("evaluating", [TRAIN_CONFIG, EVALUATE_CONFIG, *config_files], bundle_dir, **bundle_overrides)
    results = _collect_results(run_dir / "eval", report_classes(bundle_dir))
    _write_json_atomically(run_dir / RESULTS_FILE, results)
    record["evaluated"] = True
    _write_json_atomically(run_dir / RECORD_FILE, record)
    return results


def as_list(value: Any) -> list:
    """A CLI list option as a list: ``"0,1,2"``, ``(0, 1, 2)`` (what fire makes of ``0,1,2``) or one value."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def default_value(bundle_dir: str | os.PathLike, config_id: str) -> Any:
    """The value of ``config_id`` in the bundle's train.json, parsed."""
    return bundle_config(bundle_dir).get_parsed_content(config_id)


def experiment_overrides(dataset_dir: str | os.PathLike, ablation: str, fold: int | None, **overrides: Any) -> dict:
    """The overrides of one run, built alike by every experiment command so that their runs can be shared.

    Args:
        dataset_dir: the dataset; made absolute.
        ablation: the paper's ablation row (Basic, DS, SDD, SDE, DSD).
        fold: the cross-validation fold, or ``None`` for bundles with a fixed split.
        overrides: any other config ids and values.
    """
    settings = {**overrides, "dataset_dir": str(Path(dataset_dir).resolve()), "ablation": ablation}
    if fold is not None:
        settings["fold"] = int(fold)
    return settings


def study_run_dir(work_dir: str | os.PathLike, ablation: str, fold: int | None) -> Path:
    """The run folder of one ablation row on one fold: ``WORK_DIR/<row>/fold_<k>``, ``WORK_DIR/<row>`` without folds.

    :mod:`custom.cv` and :mod:`custom.ablation` both lay their runs out so, which lets them share runs.
    """
    return Path(work_dir) / ablation / f"fold_{fold}" if fold is not None else Path(work_dir) / ablation


def run_study(
    bundle_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    ablation: str,
    fold: int | None,
    dataset_dir: str | os.PathLike,
    overrides: Mapping[str, Any],
    config_files: Sequence[str] = (),
    tracking: str | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """One run of a cross-validation or an ablation study: :func:`run_experiment` in :func:`study_run_dir`.

    Args:
        bundle_dir: the bundle root.
        work_dir: the study's work folder.
        ablation: the paper's ablation row (Basic, DS, SDD, SDE, DSD).
        fold: the cross-validation fold, or ``None`` for bundles with a fixed split.
        dataset_dir: the dataset.
        overrides: any other config ids and values.
        config_files: extra config files of the bundle, see :func:`run_experiment`.
        tracking: ``None`` or ``"mlflow"``: one MLflow run named after the run folder, in ``work_dir``.

    Returns:
        The run's results, see :func:`run_experiment`.
    """
    from custom.tracking import tracking_settings

    run_dir = study_run_dir(work_dir, ablation, fold)
    return run_experiment(
        bundle_dir,
        run_dir,
        experiment_overrides(dataset_dir, ablation, fold, **overrides),
        config_files=config_files,
        tracking=tracking_settings(tracking, bundle_dir, work_dir, run_dir.relative_to(work_dir).as_posix()),
    )
