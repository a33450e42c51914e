"""Helpers shared by the tests: the bundles, tiny sizes, ``python -m monai.bundle`` run as a user does, error chains."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import load_net_with_metadata
from monai.networks.nets import UNETR

from custom.definitions import TERM_NAMES

__all__ = [
    "BRATS_BUNDLE",
    "HIPPOCAMPUS_BUNDLE",
    "MMWHS_BUNDLE",
    "ROOT",
    "TINY_NETWORK_KEYS",
    "TINY_UNETR",
    "assert_bad_input_fails_clearly",
    "assert_exports_match_checkpoint",
    "assert_inference_needs_no_custom_code",
    "assert_plain_unetr_training_outputs",
    "cli_overrides",
    "error_chain",
    "mlflow_runs",
    "run_cli",
    "network_overrides",
    "run_console",
    "run_module",
    "tiny_network",
    "tracking_args",
    "train_bundle_copy",
]

ROOT = Path(__file__).resolve().parents[1]
MMWHS_BUNDLE = ROOT / "bundles" / "dsd_unetr_mmwhs"
BRATS_BUNDLE = ROOT / "bundles" / "dsd_unetr_brats"
HIPPOCAMPUS_BUNDLE = ROOT / "bundles" / "dsd_unetr_hippocampus"

#: Overrides that shrink a bundle's UNETR and pipeline so that a test trains it in seconds on a CPU.
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
#: The config ids of the tiny UNETR's shape, as inference.json names them.
TINY_NETWORK_KEYS = ("roi_size", "feature_size", "hidden_size", "mlp_dim", "num_heads")


def cli_overrides(dataset_dir: Path, **extra: Any) -> list[str]:
    """Command-line overrides that shrink a bundle to the tiny UNETR and point it at ``dataset_dir``.

    Args:
        dataset_dir: the value of ``--dataset_dir``.
        extra: more config ids and values; they win over the tiny defaults.

    Returns:
        ``["--key", "json value", ...]``.
    """
    values = {**TINY_UNETR, "dataset_dir": str(dataset_dir), **extra}
    return [arg for key, value in values.items() for arg in (f"--{key}", json.dumps(value))]


def run_cli(args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run ARGS`` in ``cwd`` and assert that it succeeds.

    Args:
        args: the arguments after ``run``.
        cwd: the working folder.
        env: the environment; this process's if ``None``.

    Returns:
        the finished process, with its captured output.
    """
    command = [sys.executable, "-m", "monai.bundle", "run", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def run_module(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m MODULE ARGS`` and assert that it succeeds."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def run_console(command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run one of the lab's console commands (``dsd-cv ARGS``) as installed by ``pip install -e .``, assert success."""
    executable = shutil.which(command) or str(Path(sys.executable).with_name(command))
    assert Path(executable).is_file(), f"{command} is not installed: run pip install -e ."
    result = subprocess.run([executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def train_bundle_copy(
    bundle_dir: Path, workspace: Path, dataset_dir: Path, cli_args: Sequence[str] = (), **overrides: Any
) -> Path:
    """Copy a bundle into ``workspace`` and train it with the literal full training command, from its root.

    Args:
        bundle_dir: the bundle to copy.
        workspace: where the copy goes.
        dataset_dir: the data.
        cli_args: more arguments of the command, e.g. :data:`TRACKING_ARGS`.
        overrides: config overrides on top of the tiny UNETR's.

    Returns:
        The trained copy.
    """
    bundle = workspace / bundle_dir.name
    shutil.copytree(bundle_dir, bundle)
    command = ["training", "--meta_file", "configs/metadata.json", "--config_file", "configs/train.json"]
    command += ["--logging_file", "configs/logging.conf", *cli_args]
    run_cli(command + cli_overrides(dataset_dir, **overrides), cwd=bundle)
    return bundle


def tracking_args(bundle_root: str = ".") -> list[str]:
    """``--tracking <bundle_root>/configs/mlflow.json``, the bundles' MLflow tracking, where MLflow is installed."""
    return ["--tracking", f"{bundle_root}/configs/mlflow.json"] if importlib.util.find_spec("mlflow") else []


def mlflow_runs(tracking_db: Path) -> list:
    """Every run of every experiment in an MLflow SQLite store, oldest first, with its metric histories.

    Returns:
        ``[(run, {metric: [values by step]})]``; the test is skipped where MLflow is not installed.
    """
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tracking_db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, order_by=["attributes.start_time ASC"])
    return [
        (run, {key: [m.value for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics})
        for run in runs
    ]


def assert_plain_unetr_training_outputs(
    bundle: Path, in_channels: int, out_channels: int, more_tags: Sequence[str] = ()
) -> None:
    """A trained bundle saved plain tiny-UNETR checkpoints and logged both metrics, every loss term, per iteration
    (``train_loss/<term>``) and as epoch mean (``train_<term>``), and ``more_tags``, in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    backbone = UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=TINY_UNETR["roi_size"],
        feature_size=TINY_UNETR["feature_size"],
        hidden_size=TINY_UNETR["hidden_size"],
        mlp_dim=TINY_UNETR["mlp_dim"],
        num_heads=TINY_UNETR["num_heads"],
        proj_type="perceptron",
    )
    backbone.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True), strict=True)
    assert (bundle / "models" / "model_final.pt").is_file()
    tags = set()
    for events in (bundle / "eval").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    loss_terms = {f"train_loss/{term}" for term in TERM_NAMES} | {f"train_{term}" for term in TERM_NAMES}
    assert loss_terms | {"val_mean_dice", "val_hd95_mm", *more_tags} <= tags


def network_overrides() -> list[str]:
    """CLI overrides that shrink ``network_def`` and the metadata's patch shape to the tiny UNETR."""
    values = {key: TINY_UNETR[key] for key in TINY_NETWORK_KEYS}
    for io_key in ("inputs#image", "outputs#pred"):
        values[f"_meta_#network_data_format#{io_key}#spatial_shape"] = TINY_UNETR["roi_size"]
    return [arg for key, value in values.items() for arg in (f"--{key}", json.dumps(value))]


def tiny_network(bundle: Path) -> torch.nn.Module:
    """The bundle's deployed network, ``network_def`` of ``inference.json``, at the tiny UNETR's size."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    for key in TINY_NETWORK_KEYS:
        parser[key] = TINY_UNETR[key]
    return parser.get_parsed_content("network_def")


def assert_inference_needs_no_custom_code(inference_config: Path) -> None:
    """``inference.json`` uses this repository's code only for its progress log, off where ``custom`` is absent.

    The rest of the config must not name ``custom``; its handlers resolve with and without ``custom`` importable.
    """
    inference = json.loads(inference_config.read_text())
    optional = [h for h in inference["handlers"] if "custom" in json.dumps(h)]
    assert [h["_target_"] for h in optional] == ["custom.progress.ProgressLogger"]
    required = {**inference, "handlers": [h for h in inference["handlers"] if h not in optional]}
    assert "custom" not in json.dumps(required)

    def handler_types() -> list[str]:
        parser = ConfigParser()
        parser.read_config(str(inference_config))
        for key in TINY_NETWORK_KEYS:
            parser[key] = TINY_UNETR[key]
        return [type(h).__name__ for h in parser.get_parsed_content("handlers")]

    assert handler_types()[-1] == "ProgressLogger"
    with mock.patch.dict(sys.modules, {"custom": None}):  # as if not installed: find_spec gives None
        assert "ProgressLogger" not in handler_types()


def assert_exports_match_checkpoint(bundle: Path) -> None:
    """The Model Zoo's network checks and TorchScript export, run from a trained bundle's root as a user does.

    ``verify_net_in_out`` and ``ckpt_export`` run with the literal commands (plus the tiny-UNETR
    overrides); the exported model must load with its metadata and compute what the checkpoint does.
    """
    common = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", *network_overrides()]
    run_module("monai.bundle", "verify_net_in_out", "network_def", *common, cwd=bundle)
    export = ["--filepath", "models/model.ts", "--ckpt_file", "models/model.pt"]
    run_module("monai.bundle", "ckpt_export", "network_def", *export, *common, cwd=bundle)

    exported, meta, extra = load_net_with_metadata(
        str(bundle / "models" / "model.ts"), more_extra_files=["inference.json"]
    )
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] == metadata["version"]
    assert json.loads(extra["inference.json"]) == json.loads((bundle / "configs" / "inference.json").read_text())
    network = tiny_network(bundle)
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True), strict=True)
    network.eval()
    image = meta["network_data_format"]["inputs"]["image"]
    x = torch.rand(1, image["num_channels"], *image["spatial_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network(x)
        torch.testing.assert_close(exported(x), expected)
    assert expected.shape[1] == meta["network_data_format"]["outputs"]["pred"]["num_channels"]


def assert_bad_input_fails_clearly(train: Callable[[], Any], expected_parts: Sequence[str], models_dir: Path) -> None:
    """``train()`` raises an error whose chain names every expected part, and ``models_dir`` is left as it was.

    Args:
        train: runs a training that must fail on the bad input.
        expected_parts: strings the error must name, e.g. the file and the bad value.
        models_dir: a folder of earlier outputs that must keep its files and their contents.
    """
    earlier = {p.name: p.read_bytes() for p in models_dir.iterdir()}
    with pytest.raises(Exception) as raised:
        train()
    message = error_chain(raised.value)
    assert all(part in message for part in expected_parts), message[-2000:]
    assert {p.name: p.read_bytes() for p in models_dir.iterdir()} == earlier


def error_chain(error: BaseException | None) -> str:
    """The messages of an exception and of every exception it was raised from or during, one a line."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)
