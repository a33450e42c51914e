"""The bundles as the lab sees them: where they are, what their configs say, and running one of their workflows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLES_DIR",
    "EVALUATE_CONFIG",
    "INFERENCE_CONFIG",
    "TRAIN_CONFIG",
    "bundle_config",
    "bundle_has_folds",
    "default_value",
    "report_classes",
    "run_bundle",
]

#: The bundles of this repository (the lab runs from a source checkout, e.g. an editable install).
BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
TRAIN_CONFIG = "train.json"
EVALUATE_CONFIG = "evaluate.json"
INFERENCE_CONFIG = "inference.json"


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


def default_value(bundle_dir: str | os.PathLike, config_id: str) -> Any:
    """The value of ``config_id`` in the bundle's train.json, parsed."""
    return bundle_config(bundle_dir).get_parsed_content(config_id)


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
