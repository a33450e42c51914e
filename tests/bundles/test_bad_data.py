"""A bad dataset under the MM-WHS bundle's commands: exit code 1, the file and the fault in the last line, earlier
outputs untouched. The faults are those of ``tests.helpers.DATA_FAULTS``, which ``dsd-check-data`` finds in one run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from custom.errors import failure_line
from tests.helpers import (
    DATA_FAULTS,
    MMWHS_BUNDLE,
    TINY_NETWORK_KEYS,
    TINY_UNETR,
    DataFault,
    break_mmwhs_dataset,
    cli_overrides,
    tiny_network,
    tiny_train_workflow,
)

pytestmark = pytest.mark.usefixtures("single_thread")

EARLIER = {"model.pt": b"earlier best model", "model_final.pt": b"earlier final model"}


def _faults(training: str) -> list:
    return [pytest.param(fault, id=fault.name) for fault in DATA_FAULTS if fault.training == training]


def _earlier_outputs(bundle_root: Path) -> Path:
    models = bundle_root / "models"
    models.mkdir(parents=True)
    for name, content in EARLIER.items():
        (models / name).write_bytes(content)
    return models


def _assert_names(line: str, fault: DataFault) -> None:
    kind, _, message = line.partition(": ")
    assert kind in ("DataError", "MissingDataError") and fault.file in message and fault.message in message, line


@pytest.mark.parametrize("fault", _faults("cli"))
def test_the_training_command_exits_with_1_and_ends_naming_the_file(tmp_path, mmwhs_fault_source, fault):
    data_dir = break_mmwhs_dataset(mmwhs_fault_source, tmp_path / "data", [fault])
    bundle = tmp_path / MMWHS_BUNDLE.name
    shutil.copytree(MMWHS_BUNDLE, bundle)
    models = _earlier_outputs(bundle)
    # The bundle's own cache_rate 1.0 and 4 workers: threads still filling the cache when one file fails used to
    # end the process in "terminate called without an active exception" (exit code 134).
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", "configs/metadata.json"]
    command += ["--config_file", "configs/train.json", "--logging_file", "configs/logging.conf"]
    command += cli_overrides(data_dir, max_epochs=1, num_workers=4, cache_rate=1.0)
    result = subprocess.run(command, cwd=bundle, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "Traceback (most recent call last)" in result.stdout  # kept for whoever wants it
    _assert_names(result.stdout.strip().splitlines()[-1], fault)
    assert {p.name: p.read_bytes() for p in models.iterdir()} == EARLIER


def _train_in_process(bundle_root: Path, dataset_dir: Path) -> None:
    tiny_train_workflow(MMWHS_BUNDLE, dataset_dir, bundle_root, max_epochs=1, cache_rate=1.0).run()


@pytest.mark.parametrize("fault", _faults("in-process"))
def test_training_refuses_the_fault_naming_the_file(tmp_path, mmwhs_fault_source, fault):
    data_dir = break_mmwhs_dataset(mmwhs_fault_source, tmp_path / "data", [fault])
    models = _earlier_outputs(tmp_path)
    with pytest.raises(Exception) as raised:
        _train_in_process(tmp_path, data_dir)
    _assert_names(failure_line(raised.value) or f"{type(raised.value).__name__}: {raised.value}", fault)
    assert {p.name: p.read_bytes() for p in models.iterdir()} == EARLIER


def _empty(data_dir: Path) -> None:
    for path in data_dir.iterdir():
        path.unlink()


@pytest.mark.parametrize(
    "spoil, message",
    [(shutil.rmtree, "the MM-WHS dataset folder does not exist"), (_empty, "the MM-WHS dataset folder is empty")],
    ids=["missing-folder", "empty-folder"],
)
def test_training_refuses_a_missing_or_empty_folder(tmp_path, mmwhs_fault_source, spoil, message):
    data_dir = break_mmwhs_dataset(mmwhs_fault_source, tmp_path / "data", [])
    spoil(data_dir)
    models = _earlier_outputs(tmp_path)
    with pytest.raises(Exception) as raised:
        _train_in_process(tmp_path, data_dir)
    assert f"Error: {data_dir}: {message}" in failure_line(raised.value)
    assert {p.name: p.read_bytes() for p in models.iterdir()} == EARLIER


@pytest.mark.parametrize("fault", _faults("cli")[:2])
def test_inference_names_the_file_from_its_loader_processes(tmp_path, mmwhs_fault_source, fault):
    broken = break_mmwhs_dataset(mmwhs_fault_source, tmp_path / "broken", [fault])
    data_dir = tmp_path / "new_scans"
    data_dir.mkdir()
    shutil.copy(broken / fault.file, data_dir / fault.file)
    (tmp_path / "models").mkdir()
    torch.save(tiny_network(MMWHS_BUNDLE).state_dict(), tmp_path / "models" / "model.pt")
    workflow = ConfigWorkflow(
        config_file=str(MMWHS_BUNDLE / "configs" / "inference.json"),
        workflow_type="infer",
        bundle_root=str(tmp_path),
        dataset_dir=str(data_dir),
        **{key: TINY_UNETR[key] for key in TINY_NETWORK_KEYS},
    )
    workflow.initialize()
    with pytest.raises(RuntimeError) as raised:  # re-raised by the DataLoader from its worker process, as text
        workflow.run()
    _assert_names(failure_line(raised.value), fault)
