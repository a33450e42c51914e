"""The bundles on a CUDA GPU: AMP in both dtypes, deterministic runs, host syncs of a step, torchrun over NCCL.

The prepared GPU check of the bundles (``python -m pytest tests/gpu -v``, a few minutes on one GPU); every
test skips without CUDA. The sizes are the tests' tiny UNETR; the same code paths run on the CPU in
``tests/bundles/test_devices_and_precision.py`` and ``tests/bundles/test_resume.py`` where they can.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Events

from dsd_lab.data.synthetic_msd import make_brats, make_hippocampus
from tests.helpers import (
    BRATS_BUNDLE,
    HIPPOCAMPUS_BUNDLE,
    MMWHS_BUNDLE,
    cli_overrides,
    tiny_network,
    tiny_train_workflow,
)

# cuBLAS reads its workspace setting when CUDA starts; this module is imported before any test of the session runs.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

#: Training steps of the AMP check.
STEPS = 20
#: Narrow backbones at the tiny patch size (SwinUNETR's 1/32 bottleneck needs 64³ for instance norm).
BACKBONES: dict[str | None, dict[str, Any]] = {
    None: {},
    "backbone_dynunet.json": {"dynunet_filters": [8, 16, 32, 64, 64]},
    "backbone_swinunetr.json": {"swinunetr_feature_size": 12, "swinunetr_depths": [1, 1, 1, 1], "roi_size": [64] * 3},
    "backbone_segresnet.json": {"segresnet_init_filters": 8},
}
#: The parts of a training step that a host sync may come from, by the files on the Python stack of the syncing call.
#: Only the loss and its heads (counted by their own GPU test), the backbone, the backward pass and float16's
#: GradScaler may need one; the log handlers need one copy of the loss terms.
SYNC_SOURCES = {
    "log handlers": ("custom/loss_terms.py",),
    "GradScaler": ("torch/amp/grad_scaler.py",),
    "loss and heads": ("custom/losses.py", "custom/blockwise_loss.py", "custom/networks.py", "monai/losses/"),
    "backbone": ("monai/networks/",),
    "optimizer": ("torch/optim/",),
    "batch transfer": ("monai/engines/utils.py",),
    "other handlers and metrics": ("custom/", "monai/handlers/", "ignite/metrics/", "ignite/handlers/"),
    "backward pass and the rest of the step": ("monai/engines/trainer.py", "monai/engines/workflow.py"),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, mmwhs_dataset) -> dict[str, tuple[Path, Path]]:
    """Bundle name -> (bundle folder, synthetic dataset), for the three bundles."""
    brats = tmp_path_factory.mktemp("brats") / "Task01_BrainTumour"
    make_brats(brats, cases=4, test_cases=1, seed=2, shape=(41, 38, 30))
    hippocampus = tmp_path_factory.mktemp("hippocampus") / "Task04_Hippocampus"
    make_hippocampus(hippocampus, cases=7, test_cases=1, seed=4)
    return {
        "mmwhs": (MMWHS_BUNDLE, mmwhs_dataset),
        "brats": (BRATS_BUNDLE, brats),
        "hippocampus": (HIPPOCAMPUS_BUNDLE, hippocampus),
    }


@pytest.fixture(autouse=True)
def fast_kernels_afterwards():
    """A deterministic test leaves PyTorch deterministic; the next test's config sets its own switch again."""
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["mmwhs", "brats", "hippocampus"])
def test_twenty_amp_steps_give_finite_losses_and_a_settled_loss_scale(datasets, tmp_path, name, amp_dtype):
    bundle, dataset = datasets[name]
    # the device as --device cuda:0 gives it: a string
    workflow = tiny_train_workflow(bundle, dataset, tmp_path, amp_dtype=amp_dtype, device="cuda:0", val_interval=1000)
    trainer, scaler = workflow.trainer, workflow.parser.get_parsed_content("grad_scaler")
    trainer.state.max_epochs = math.ceil(STEPS / len(trainer.data_loader))
    losses, scales, dtypes = [], [], set()

    def record(engine):
        losses.append(engine.state.output["loss"].detach())
        dtypes.add(engine.state.output["pred"]["pred"].dtype)
        scales.append(engine.scaler.get_scale())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    workflow.run()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    evaluator.run()  # validation under the same autocast

    assert len(losses) >= STEPS and bool(torch.stack(losses).isfinite().all()), losses
    assert dtypes == {getattr(torch, amp_dtype)}
    assert trainer.scaler is scaler and scaler.is_enabled() is (amp_dtype == "float16")
    assert all(math.isfinite(s) and s >= 1.0 for s in scales)
    settled = scales[len(scales) // 2 :]
    assert settled == sorted(settled), f"steps skipped in the second half, loss scales {scales}"
    assert evaluator.state.iteration > 0 and "val_mean_dice" in evaluator.state.metrics
    saved = torch.load(tmp_path / "models" / "resume.pt", weights_only=True)["grad_scaler"]
    assert saved == scaler.state_dict() and (saved["scale"] == scales[-1] if saved else amp_dtype == "bfloat16")


def _trained_weights(dataset: Path, root: Path, backbone: str | None) -> dict[str, torch.Tensor]:
    configs = ["train.json"] + ([backbone] if backbone else [])
    overrides = {"deterministic": True, "max_epochs": 1, "val_interval": 2, "train#trainer#epoch_length": 3}
    workflow = tiny_train_workflow(MMWHS_BUNDLE, dataset, root, configs, **overrides, **BACKBONES[backbone])
    assert torch.are_deterministic_algorithms_enabled()
    workflow.run()
    assert workflow.trainer.state.iteration == 3
    weights = workflow.parser.get_parsed_content("dsd_network").state_dict()
    return {name: value.detach().cpu().clone() for name, value in weights.items()}


@pytest.mark.parametrize(
    "backbone",
    [
        None,
        "backbone_dynunet.json",
        # May raise where the installed PyTorch has no deterministic CUDA kernel for one of their ops
        # (e.g. trilinear upsampling's backward in older releases); must never silently differ.
        pytest.param("backbone_swinunetr.json", marks=pytest.mark.xfail(raises=RuntimeError, strict=False)),
        pytest.param("backbone_segresnet.json", marks=pytest.mark.xfail(raises=RuntimeError, strict=False)),
    ],
    ids=["unetr", "dynunet", "swinunetr", "segresnet"],
)
def test_deterministic_runs_of_three_steps_give_identical_weights(mmwhs_dataset, tmp_path, backbone):
    first = _trained_weights(mmwhs_dataset, tmp_path / "first", backbone)
    second = _trained_weights(mmwhs_dataset, tmp_path / "second", backbone)
    assert first.keys() == second.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []


def _source(stack: list[traceback.FrameSummary]) -> str:
    """Where a sync was called from: the innermost frame of a known part of the step, else the innermost frame."""
    for frame in reversed(stack):
        path = Path(frame.filename).as_posix()
        for source, files in SYNC_SOURCES.items():
            if any(f in path for f in files):
                return source
    return f"other: {stack[-1].filename}:{stack[-1].lineno}"


def test_host_syncs_of_a_dsd_training_step(mmwhs_dataset, tmp_path, capsys):
    """Counted in a steady-state step (the third) of the default DSD training, by where they come from."""
    workflow = tiny_train_workflow(MMWHS_BUNDLE, mmwhs_dataset, tmp_path, max_epochs=1, val_interval=2)
    trainer, counted = workflow.trainer, 3
    catcher, syncs = warnings.catch_warnings(), Counter()

    def count(message, *args, **kwargs):
        if "synchroniz" in str(message):
            syncs[_source(traceback.extract_stack()[:-1])] += 1

    def start(engine):
        catcher.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = count  # called while the syncing line is on the stack
        torch.cuda.set_sync_debug_mode("warn")

    def stop(engine):
        torch.cuda.set_sync_debug_mode("default")
        catcher.__exit__(None, None, None)

    trainer.add_event_handler(Events.ITERATION_STARTED(once=counted), start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=counted), stop)  # after every handler of the config
    workflow.run()

    with capsys.disabled():
        print(f"\nhost syncs in DSD training step {counted} ({workflow.parser.get_parsed_content('amp_dtype')}):")
        for source, number in sorted(syncs.items()):
            print(f"  {number:3d}  {source}")
    assert syncs["log handlers"] == 1  # one copy of the loss terms for both log handlers
    assert syncs["other handlers and metrics"] == syncs["batch transfer"] == 0
    if not workflow.parser.get_parsed_content("grad_scaler").is_enabled():
        assert syncs["GradScaler"] == 0


def test_one_process_torchrun_trains_an_epoch_over_nccl(mmwhs_dataset, tmp_path):
    bundle = tmp_path / MMWHS_BUNDLE.name
    shutil.copytree(MMWHS_BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    configs = "['configs/train.json','configs/multi_gpu_train.json']"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1"]
    command += ["-m", "monai.bundle", "run", "--config_file", configs, "--meta_file", "configs/metadata.json"]
    command += ["--logging_file", "configs/logging.conf"]
    command += cli_overrides(mmwhs_dataset, num_folds=2, max_epochs=1, val_interval=1)
    result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    network = tiny_network(bundle)
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True), strict=True)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    totals = []
    for events in (bundle / "eval").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "train_loss/total" in accumulator.Tags()["scalars"]:
            totals += [e.value for e in accumulator.Scalars("train_loss/total")]
    assert totals and all(math.isfinite(v) for v in totals)  # each averaged over the ranks by NCCL's all-reduce


@pytest.fixture
def current_device_restored():
    device = torch.cuda.current_device()
    yield
    torch.cuda.set_device(device)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA GPU")
@pytest.mark.usefixtures("current_device_restored")
def test_device_cuda_1_trains_on_the_second_gpu_only(mmwhs_dataset, tmp_path):
    before = torch.cuda.memory_allocated(0)
    workflow = tiny_train_workflow(MMWHS_BUNDLE, mmwhs_dataset, tmp_path, device="cuda:1", max_epochs=1, val_interval=2)
    workflow.run()
    network = workflow.parser.get_parsed_content("dsd_network")
    assert {p.device for p in network.parameters()} == {torch.device("cuda", 1)}
    assert torch.cuda.current_device() == 1
    assert torch.cuda.memory_allocated(0) == before
