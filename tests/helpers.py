"""Helpers shared by the tests: the bundles, tiny sizes, ``python -m monai.bundle`` run as a user does, error chains."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import load_net_with_metadata
from monai.networks.nets import UNETR

from custom.definitions import TERM_NAMES
from custom.losses import DSDLoss
from custom.networks import DeferredLogits, DSDNet

__all__ = [
    "assert_bad_input_fails_clearly",
    "assert_exports_match_checkpoint",
    "assert_inference_needs_no_custom_code",
    "assert_plain_unetr_training_outputs",
    "break_mmwhs_dataset",
    "cli_overrides",
    "deferred_heads",
    "error_chain",
    "head_terms",
    "leaves_of",
    "mlflow_runs",
    "network_overrides",
    "run_cli",
    "run_console",
    "run_module",
    "tiny_network",
    "tiny_train_workflow",
    "tiny_unetr_dsd",
    "torchrun",
    "tracking_args",
    "train_bundle_copy",
    "BAD_MMWHS_CASES",
    "BRATS_BUNDLE",
    "DATA_FAULTS",
    "DataFault",
    "HIPPOCAMPUS_BUNDLE",
    "MMWHS_BUNDLE",
    "ROOT",
    "TINY_NETWORK_KEYS",
    "TINY_UNETR",
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


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nnodes=1 --nproc_per_node=2 ARGS``, the torchrun of this Python if it has one."""
    executable = Path(sys.executable).with_name("torchrun")
    launcher = [str(executable)] if executable.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    command = [*launcher, "--standalone", "--nnodes=1", "--nproc_per_node=2", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
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


def tiny_train_workflow(
    bundle_dir: Path,
    dataset_dir: Path,
    bundle_root: Path,
    config_files: Sequence[str] = ("train.json",),
    **overrides: Any,
) -> ConfigWorkflow:
    """A bundle's training at the tiny UNETR's sizes, initialised in this process (the trainer is built on first use).

    Args:
        bundle_dir: the bundle whose configs are read.
        dataset_dir: the data.
        bundle_root: where the run writes ``models/`` and ``eval/``.
        config_files: names in the bundle's ``configs/``, merged in order.
        overrides: config ids and values; they win over the tiny sizes.
    """
    workflow = ConfigWorkflow(
        config_file=[str(bundle_dir / "configs" / name) for name in config_files],
        workflow_type="train",
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset_dir),
        **{**TINY_UNETR, **overrides},
    )
    workflow.initialize()
    return workflow


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


#: The switch of every part of inference.json that uses this repository's code.
_OFF_WITHOUT_CUSTOM = "$importlib.util.find_spec('custom') is None"


def _custom_parts(config: Any) -> list[dict]:
    """The components of a config whose ``_target_`` is this repository's code; asserts nothing else names it."""
    parts = []
    if isinstance(config, dict):
        if str(config.get("_target_", "")).startswith("custom."):
            parts.append(config)
        for key, value in config.items():
            if key not in ("_target_", "_disabled_", "_desc_"):
                parts += _custom_parts(value)
    elif isinstance(config, list):
        for item in config:
            parts += _custom_parts(item)
    else:
        assert "custom" not in str(config), f"inference.json needs this repository's code in {config!r}"
    return parts


def assert_inference_needs_no_custom_code(inference_config: Path) -> None:
    """``inference.json`` uses this repository's code only in parts that are off where ``custom`` is absent: the
    progress log, the loader that names a file it cannot read, and the NaN check; MONAI's loader stands in then.

    Its handlers and pre-processing resolve with and without ``custom`` importable.
    """
    optional = _custom_parts(json.loads(inference_config.read_text()))
    assert sorted(part["_target_"] for part in optional) == [
        "custom.progress.ProgressLogger", "custom.transforms.CheckFinited", "custom.transforms.LoadImageNamedd"
    ]  # fmt: skip
    assert all(part["_disabled_"] == _OFF_WITHOUT_CUSTOM for part in optional)

    def resolved_types(config_id: str) -> list[str]:
        parser = ConfigParser()
        parser.read_config(str(inference_config))
        for key in TINY_NETWORK_KEYS:
            parser[key] = TINY_UNETR[key]
        parsed = parser.get_parsed_content(config_id)
        return [type(part).__name__ for part in getattr(parsed, "transforms", parsed)]

    assert resolved_types("handlers")[-1] == "ProgressLogger"
    assert resolved_types("preprocessing")[:2] == ["LoadImageNamedd", "CheckFinited"]
    with mock.patch.dict(sys.modules, {"custom": None}):  # as if not installed: find_spec gives None
        assert "ProgressLogger" not in resolved_types("handlers")
        assert resolved_types("preprocessing")[0] == "LoadImaged"
        assert "CheckFinited" not in resolved_types("preprocessing")


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


# --- a synthetic MM-WHS dataset with one fault per case -----------------------------------------------------------

#: Cases of the synthetic MM-WHS dataset that :data:`DATA_FAULTS` break, one case each; fold 0 validates on 1001-1003.
BAD_MMWHS_CASES = 12


def _case_file(data_dir: Path, case: int, part: str) -> Path:
    return data_dir / f"ct_train_{case}_{part}.nii.gz"


def _rewrite_nifti(path: Path, data=None, affine=None) -> None:
    image = nib.load(path)
    array = np.asarray(image.dataobj) if data is None else data(np.asarray(image.dataobj))
    nib.save(nib.Nifti1Image(array, image.affine if affine is None else affine(image.affine.copy())), path)


def _with_nan(data: np.ndarray) -> np.ndarray:
    data = data.astype(np.float32)
    data[5, 5, 5] = np.nan
    return data


def _truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])  # a broken download: the gzip stream ends early


def _with_code(data: np.ndarray) -> np.ndarray:
    data = data.copy()
    data[:2, :2, :2] = 123
    return data


def _scale_spacing(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda affine: affine * [factor, factor, factor, 1]


def _flip_first_axis(affine: np.ndarray) -> np.ndarray:
    affine[:3, 0] *= -1
    return affine


def _copy_case(data_dir: Path, source: int, target: int, parts=("image", "label")) -> None:
    for part in parts:
        shutil.copy(_case_file(data_dir, source, part), _case_file(data_dir, target, part))


@dataclass(frozen=True)
class DataFault:
    """One fault in a case of a synthetic MM-WHS dataset of :data:`BAD_MMWHS_CASES` cases.

    Attributes:
        name: the test id.
        make: breaks the dataset folder it is given.
        file: the file at fault.
        fault: its fault in ``dsd-check-data``'s table (``warning: ...`` for a warning).
        training: how training meets it: ``"cli"`` (the literal command, for the faults that used to abort it),
            ``"in-process"``, or ``None`` when training runs on (the dataset check alone reports it).
        message: a part of the message that training ends with.
    """

    name: str
    make: Callable[[Path], None]
    file: str
    fault: str
    training: str | None = None
    message: str = ""


DATA_FAULTS: tuple[DataFault, ...] = (
    DataFault(
        "nan-voxel", lambda d: _rewrite_nifti(_case_file(d, 1004, "image"), data=_with_nan),
        "ct_train_1004_image.nii.gz", "NaN/Inf", "cli", "1 NaN/Inf voxel(s)",
    ),
    DataFault(
        "truncated-gzip", lambda d: _truncate(_case_file(d, 1005, "image")),
        "ct_train_1005_image.nii.gz", "unreadable", "cli", "truncated",
    ),
    DataFault(
        "4d-image", lambda d: _rewrite_nifti(_case_file(d, 1006, "image"), data=lambda a: np.stack([a, a], -1)),
        "ct_train_1006_image.nii.gz", "channels", "cli", "this volume has 2 channels; MM-WHS CT has 1",
    ),
    DataFault(
        "not-nifti", lambda d: _case_file(d, 1007, "image").write_bytes(b"<html>404 Not Found</html>"),
        "ct_train_1007_image.nii.gz", "unreadable", "in-process", "cannot read the image header",
    ),
    DataFault(
        "unknown-label-code", lambda d: _rewrite_nifti(_case_file(d, 1008, "label"), data=_with_code),
        "ct_train_1008_label.nii.gz", "label codes", "in-process", "123 (8 voxels)",
    ),
    DataFault(
        "shape-mismatch", lambda d: _rewrite_nifti(_case_file(d, 1009, "label"), data=lambda a: a[:-1]),
        "ct_train_1009_label.nii.gz", "shape", "in-process", "image/label shape mismatch",
    ),
    DataFault(
        "spacing-mismatch", lambda d: _rewrite_nifti(_case_file(d, 1010, "label"), affine=_scale_spacing(1.5)),
        "ct_train_1010_label.nii.gz", "spacing", "in-process", "voxel spacing",
    ),
    DataFault(
        "orientation-mismatch", lambda d: _rewrite_nifti(_case_file(d, 1011, "label"), affine=_flip_first_axis),
        "ct_train_1011_label.nii.gz", "orientation", "in-process", "orientation",
    ),
    DataFault(
        "missing-label", lambda d: _copy_case(d, 1003, 1014, parts=("image",)),
        "ct_train_1014_image.nii.gz", "missing file", "in-process", "has no label",
    ),
    DataFault(
        "empty-label", lambda d: _rewrite_nifti(_case_file(d, 1001, "label"), data=np.zeros_like),
        "ct_train_1001_label.nii.gz", "empty label",
    ),
    DataFault("duplicate-case", lambda d: _copy_case(d, 1002, 1013), "ct_train_1013_image.nii.gz", "duplicate"),
    DataFault(
        "spacing-outlier",
        lambda d: [_rewrite_nifti(_case_file(d, 1012, p), affine=_scale_spacing(4)) for p in ("image", "label")],
        "ct_train_1012_image.nii.gz", "warning: spacing outlier",
    ),
    DataFault(
        "intensity-outlier",
        lambda d: _rewrite_nifti(_case_file(d, 1003, "image"), data=lambda a: (a / 4095.0).astype(np.float32)),
        "ct_train_1003_image.nii.gz", "warning: intensity outlier",
    ),
)  # fmt: skip


def break_mmwhs_dataset(source: Path, data_dir: Path, faults: Sequence[DataFault]) -> Path:
    """Copy the synthetic MM-WHS dataset ``source`` to ``data_dir`` and make the ``faults`` in the copy."""
    shutil.copytree(source, data_dir)
    for fault in faults:
        fault.make(data_dir)
    return data_dir
def deferred_heads(
    spatial: Sequence[int],
    scales: Sequence[int | Sequence[int]],
    classes: int,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    batch: int = 2,
    features: int | None = None,
) -> list[DeferredLogits]:
    """Deferred logits of the given scales with random kernels and position-dependent biases, as leaves.

    A head of scale 1 reads a feature map of ``features`` channels (default: ``classes``) through its 1x1x1 kernel.
    """
    g = torch.Generator().manual_seed(seed)
    heads = []
    for s in scales:
        s = (s,) * len(spatial) if isinstance(s, int) else tuple(s)
        low = [n // f for n, f in zip(spatial, s)]
        channels = features if features is not None and math.prod(s) == 1 else classes
        tensors = (
            2 * torch.randn(batch, channels, *low, generator=g, dtype=dtype),
            torch.randn(channels, classes, *s, generator=g, dtype=dtype) / 2,
            torch.randn(classes, *s, generator=g, dtype=dtype) / 2,
        )
        heads.append(DeferredLogits(*(t.requires_grad_() for t in tensors)))
    return heads


def head_terms(
    loss: DSDLoss, encoders: Sequence[DeferredLogits], decoders: Sequence[DeferredLogits], target: torch.Tensor,
    upsample: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The heads' terms summed (the main output's term left out) and every term, blockwise or at full resolution."""
    if upsample:
        encoders, decoders = [h.upsample() for h in encoders], [h.upsample() for h in decoders]
    head = decoders[0]
    reference, classes = (head.low_res, head.weight.shape[1]) if isinstance(head, DeferredLogits) else (head, head.shape[1])
    pred = torch.zeros(target.shape[0], classes, *target.shape[2:], dtype=reference.dtype, device=reference.device)
    total = loss({"pred": pred, "encoder": list(encoders), "decoder": list(decoders)}, target)
    return total - loss.latest_terms["main_dice_ce"], loss.latest_terms


def leaves_of(heads: Sequence[DeferredLogits]) -> list[torch.Tensor]:
    """Every tensor of every head."""
    return [t for head in heads for t in head]


def tiny_unetr_dsd(classes: int, defer: bool, size: int = 16) -> DSDNet:
    """A seeded tiny UNETR with the paper's taps, its heads' upsampling biases made non-zero."""
    torch.manual_seed(0)
    backbone = UNETR(
        1, classes, img_size=size, feature_size=4, hidden_size=24, mlp_dim=48, num_heads=4, proj_type="perceptron"
    )
    net = DSDNet(
        backbone,
        ["encoder1", "encoder2", "encoder3", "encoder4"],
        ["decoder3", "decoder4", "decoder5", "decoder5:input"],
        num_classes=classes,
        in_channels=1,
        roi_size=(size,) * 3,
        defer_upsampling=defer,
    )
    for head in net.heads.values():
        for conv in head.upsample.values():
            torch.nn.init.normal_(conv.bias, std=0.3)
    return net
