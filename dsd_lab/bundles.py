"""The bundles as the lab sees them: where they are, what their configs say, and running one of their workflows."""

from __future__ import annotations

import logging.config
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsd_lab.cli import verbose

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

#: MONAI's module loggers that print to stdout by themselves rather than through the root logger.
MONAI_LOGGERS = (
    "monai.bundle.scripts",
    "monai.bundle.workflows",
    "monai.handlers.StatsHandler",
    "monai.handlers.mlflow_handler",
    "monai.data.image_writer",
    "monai.inferers.inferer",
    "monai.transforms.compose",
    "monai.networks.utils",
)


def _log_to_file_config(log_file: str | os.PathLike) -> str:
    """A ``logging.config.fileConfig`` text: the whole log to ``log_file``, warnings and errors to the console."""
    loggers = [f"monai_{index}" for index in range(len(MONAI_LOGGERS))]
    sections = [
        f"[loggers]\nkeys=root,{','.join(loggers)}",
        "[handlers]\nkeys=console,file",
        "[formatters]\nkeys=full",
        "[logger_root]\nlevel=INFO\nhandlers=console,file",
        *(
            f"[logger_{key}]\nlevel=INFO\nhandlers=console,file\npropagate=0\nqualname={name}"
            for key, name in zip(loggers, MONAI_LOGGERS)
        ),
        "[handler_console]\nclass=StreamHandler\nlevel=WARNING\nformatter=full\nargs=(sys.stderr,)",
        f"[handler_file]\nclass=FileHandler\nlevel=INFO\nformatter=full\nargs=({str(Path(log_file).resolve())!r}, 'a')",
        "[formatter_full]\nformat=%(asctime)s - %(name)s - %(levelname)s - %(message)s",
    ]
    return "\n\n".join(sections) + "\n"


#: The bundles of this repository (the lab runs from a source checkout, e.g. an editable install).
BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
TRAIN_CONFIG = "train.json"
EVALUATE_CONFIG = "evaluate.json"
INFERENCE_CONFIG = "inference.json"


def run_bundle(
    run_id: str,
    config_files: Sequence[str],
    bundle_dir: str | os.PathLike,
    tracking: Any = None,
    log_file: str | os.PathLike | None = None,
    **overrides: Any,
) -> None:
    """Run one bundle workflow in this process, exactly as ``python -m monai.bundle run`` does.

    Args:
        run_id: ``"training"`` or ``"evaluating"``.
        config_files: config file names in the bundle's ``configs/`` folder, merged in order.
        bundle_dir: the bundle root.
        tracking: MONAI's experiment tracking: ``None``, ``"mlflow"`` or a settings dict.
        log_file: where the run's whole log goes (appended), instead of the console, which then shows warnings
            and errors only, and a progress bar for the epochs where it is a terminal. ``None`` logs to the
            console as the bundle's ``logging.conf`` says, as does :func:`dsd_lab.cli.verbose`.
        overrides: config ids and their new values.
    """
    from monai.bundle import run

    configs = Path(bundle_dir) / "configs"
    with tempfile.TemporaryDirectory() as scratch:
        logging_file = configs / "logging.conf"
        if log_file is not None and not verbose():
            logging_file = Path(scratch) / "logging.conf"
            logging_file.write_text(_log_to_file_config(log_file))
            logging.config.fileConfig(logging_file, disable_existing_loggers=False)  # before MONAI's input summary
            overrides = {"progress_bar": sys.stderr.isatty(), **overrides}
        run(
            run_id,
            config_file=[str(configs / name) for name in config_files],
            meta_file=str(configs / "metadata.json"),
            logging_file=str(logging_file),
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
    """Names of the evaluated classes (or regions), as the evaluation's metric files name them, in channel order.

    Raises:
        KeyError: when the bundle's evaluate.json does not define ``report_classes``.
    """
    bundle_dir = Path(bundle_dir)
    parser = bundle_config(bundle_dir, [TRAIN_CONFIG, EVALUATE_CONFIG])
    if "report_classes" not in parser:
        raise KeyError(f"{bundle_dir / 'configs' / EVALUATE_CONFIG} defines no 'report_classes'.")
    return [str(name) for name in parser.get_parsed_content("report_classes")]
