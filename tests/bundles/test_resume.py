"""Training that survives a kill: the atomic resume checkpoint, ``--resume true``, the best model across a resume."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.handlers import CheckpointSaver

from custom import checkpoint
from custom.checkpoint import AtomicCheckpointSaver, ResumeCheckpointLoader, atomic_save, resume_requested
from custom.mmwhs import fold_datalists
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR
from tests.helpers import cli_overrides, error_chain, run_cli, tiny_network

MAX_EPOCHS = 3
TRAIN = ["training", "--meta_file", "configs/metadata.json", "--config_file", "configs/train.json"]
TRAIN += ["--logging_file", "configs/logging.conf"]
PROGRESS = re.compile(r"training: epoch (\d+)/\d+, iteration (\d+)/(\d+)")
#: One thread per process: two processes of two threads each slow down many times on the shared 2-core machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _kill_mid_epoch_after_a_checkpoint(command: list[str], cwd: Path) -> None:
    """Run ``command``, and SIGKILL it within the first epoch that starts after a resume checkpoint was saved."""
    process = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(300, process.kill)
    watchdog.start()
    output, saved = [], False
    try:
        for line in process.stdout:
            output.append(line)
            saved = saved or "Saved the resume checkpoint" in line
            progress = PROGRESS.search(line)
            if saved and progress and int(progress[2]) < int(progress[3]):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(output)[-3000:]


def test_training_killed_mid_epoch_resumes_with_one_override(tmp_path, mmwhs_dataset):
    bundle = tmp_path / BUNDLE_DIR.name
    shutil.copytree(BUNDLE_DIR, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    overrides = cli_overrides(mmwhs_dataset, max_epochs=MAX_EPOCHS, val_interval=1, progress_interval=0)
    # float16 AMP's GradScaler on the CPU (autocast itself is CUDA's, off here); its scale doubles at every step
    overrides += cli_overrides(mmwhs_dataset, amp=True, amp_dtype="float16", **{"grad_scaler#growth_interval": 1})
    _kill_mid_epoch_after_a_checkpoint([sys.executable, "-m", "monai.bundle", "run", *TRAIN, *overrides], bundle)
    resume_file = bundle / "models" / "resume.pt"
    epoch_length = len(fold_datalists(mmwhs_dataset)["training"])
    killed = torch.load(resume_file, weights_only=True)["trainer"]
    epochs_before_kill = killed["iteration"] // epoch_length
    assert 1 <= epochs_before_kill < MAX_EPOCHS and killed["iteration"] % epoch_length == 0

    result = run_cli([*TRAIN, *overrides, "--resume", "true"], cwd=bundle, env=ENV)

    assert f"Resumed training from ./models/resume.pt after epoch {epochs_before_kill}" in result.stdout
    state = torch.load(resume_file, weights_only=True)
    assert state["trainer"]["iteration"] == MAX_EPOCHS * epoch_length
    assert state["trainer"]["iteration"] // state["trainer"]["epoch_length"] == MAX_EPOCHS
    # Adam counts its steps: the resumed optimizer went on from the killed run's count
    assert {s["step"].item() for s in state["optimizer"]["state"].values()} == {MAX_EPOCHS * epoch_length}
    assert state["lr_scheduler"]["last_epoch"] == MAX_EPOCHS
    # the loss scale went on from the killed run's, not from 2^16 again
    assert state["grad_scaler"]["scale"] == 2.0 ** (16 + MAX_EPOCHS * epoch_length)
    assert [name for _, name in state["best_model"]["_saved"]] and state["validator"]["best_metric_epoch"] >= 1
    for name in ("model.pt", "model_final.pt"):  # still the plain backbone
        tiny_network(bundle).load_state_dict(torch.load(bundle / "models" / name, weights_only=True), strict=True)
    assert sorted(p.name for p in (bundle / "models").iterdir()) == ["model.pt", "model_final.pt", "resume.pt"]


def test_resume_checkpoint_restores_an_enabled_grad_scaler(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler.scale(torch.ones(()))  # the scale exists from the first scaled loss on
    scaler.update(new_scale=256.0)
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(tmp_path / "resume.pt", {"grad_scaler": scaler}).attach(engine)
    engine.run([0], max_epochs=1)

    restored = torch.amp.GradScaler("cpu")
    loader_engine = Engine(lambda e, b: None)
    ResumeCheckpointLoader(tmp_path / "resume.pt", {"grad_scaler": restored}).attach(loader_engine)
    loader_engine.run([0], max_epochs=1)
    expected = {"scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 7, "_growth_tracker": 0}
    assert restored.state_dict() == scaler.state_dict() == expected
    assert restored.scale(torch.ones(())).item() == 256.0


def _partial_save(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")
    raise OSError("disk full")


def _failing_replace(src, dst):
    raise OSError("disk full")


@pytest.mark.parametrize(
    "target, broken", [(torch, "save"), (os, "replace")], ids=["write-fails-midway", "rename-fails"]
)
def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, target, broken):
    path = tmp_path / "resume.pt"
    atomic_save({"epoch": torch.tensor(1)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(target, broken, _partial_save if broken == "save" else _failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]


def test_saver_removes_only_its_own_stale_temp_files(tmp_path):
    path = tmp_path / "resume.pt"
    stale = tmp_path / ".resume.pt.k1ll3d.tmp"  # as atomic_save names them
    others = [tmp_path / "model.pt", tmp_path / ".other.pt.abc.tmp"]
    for file in [stale, *others]:
        file.write_bytes(b"x")
    AtomicCheckpointSaver(path, {"net": torch.nn.Linear(1, 1)}).attach(Engine(lambda e, b: None))
    assert sorted(tmp_path.iterdir()) == sorted(others)


def _validation(scores: list[float], network: torch.nn.Module, models: Path) -> tuple[Engine, CheckpointSaver]:
    """An engine whose epochs score ``scores`` and that saves ``network`` as models/model.pt by that score."""
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=scores[e.state.epoch - 1]))
    saver = CheckpointSaver(
        str(models), {"model": network}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    saver.attach(engine)
    return engine, saver


def test_resumed_best_model_saver_keeps_a_better_earlier_model(tmp_path):
    models = tmp_path / "models"
    engine, saver = _validation([0.8], torch.nn.Linear(2, 2), models)
    AtomicCheckpointSaver(models / "resume.pt", {"best_model": saver}).attach(engine)
    engine.run([0], max_epochs=1)
    best = (models / "model.pt").read_bytes()

    engine, saver = _validation([0.5, 0.9], torch.nn.Linear(2, 2), models)
    ResumeCheckpointLoader(models / "resume.pt", {"best_model": saver}, engine_key=None).attach(engine)
    saved = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: saved.append((models / "model.pt").read_bytes()))
    engine.run([0], max_epochs=2)
    assert saved[0] == best  # 0.5 < 0.8: the earlier model stays
    assert saved[1] != best  # 0.9 > 0.8


def test_saver_checkpoints_the_wrapped_module_of_data_parallel(tmp_path):
    network = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(tmp_path / "resume.pt", {"network": torch.nn.DataParallel(network)}).attach(engine)
    engine.run([0], max_epochs=1)
    state = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert state["network"].keys() == network.state_dict().keys()
    assert state["trainer"]["iteration"] == 1


@pytest.mark.parametrize(
    "value, expected", [(True, True), ("true", True), ("True", True), (False, False), ("false", False)]
)
def test_resume_flag_reads_command_line_strings(tmp_path, value, expected):
    path = tmp_path / "resume.pt"
    path.write_bytes(b"")
    assert resume_requested(value, path) is expected


def test_resume_flag_refuses_other_values(tmp_path):
    with pytest.raises(ValueError, match="'maybe'"):
        resume_requested("maybe", tmp_path / "resume.pt")


def test_resume_without_a_checkpoint_fails_naming_the_file_before_building_anything(tmp_path, mmwhs_dataset):
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE_DIR / "configs" / "train.json"),
        workflow_type="train",
        bundle_root=str(tmp_path),
        dataset_dir=str(mmwhs_dataset),
        resume="true",  # as the command line gives it
    )
    with pytest.raises(Exception) as raised:
        workflow.initialize()
    message = error_chain(raised.value)
    assert f"Cannot resume: there is no checkpoint {tmp_path}/models/resume.pt" in message, message[-2000:]
    assert list(tmp_path.iterdir()) == []
    assert checkpoint.remove_stale_temps(tmp_path / "models" / "resume.pt") == []
