"""The bundles' device, mixed-precision and determinism settings, on the CPU (tests/gpu runs them on CUDA)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from tests.helpers import BRATS_BUNDLE, HIPPOCAMPUS_BUNDLE, MMWHS_BUNDLE, ROOT, tiny_train_workflow

BUNDLES = [MMWHS_BUNDLE, BRATS_BUNDLE, HIPPOCAMPUS_BUNDLE]
#: The ids that choose the device and the autocast dtype; inference.json must choose as train.json does.
DEVICE_AND_PRECISION = ("device", "amp", "amp_dtype")
SET_DEVICE = "$torch.device(@device).index is None or torch.cuda.set_device(@device)"
WARN_CPU_BFLOAT16 = "$custom.amp.warn_cpu_bfloat16(@amp, @amp_dtype, @device)"


def _parsed(bundle: Path, config_file: str, ids: list[str], **overrides) -> dict:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config_file))
    for key, value in overrides.items():
        parser[key] = value
    return {config_id: parser.get_parsed_content(config_id) for config_id in ids}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
@pytest.mark.parametrize(
    "overrides, dtype, scales",
    [
        ({}, torch.float16, False),  # the CPU: no mixed precision, so nothing to scale
        ({"amp": "true", "amp_dtype": "float16"}, torch.float16, True),
        ({"amp": "true", "amp_dtype": "bfloat16"}, torch.bfloat16, False),
        ({"device": "cpu", "amp": True, "amp_dtype": "float16"}, torch.float16, True),  # as --device cpu gives it
    ],
)
def test_amp_dtype_sets_autocast_and_the_grad_scaler(bundle, overrides, dtype, scales):
    values = _parsed(bundle, "train.json", ["amp_kwargs", "grad_scaler"], **overrides)
    assert values["amp_kwargs"] == {"dtype": dtype}
    assert values["grad_scaler"].is_enabled() is scales


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_trainer_and_evaluator_get_the_amp_dtype(bundle):
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["train"]["trainer"]["amp_kwargs"] == train["validate"]["evaluator"]["amp_kwargs"] == "@amp_kwargs"
    assert train["train"]["resume_objects"]["grad_scaler"] == "@grad_scaler"
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["evaluator"]["amp_kwargs"] == "@amp_kwargs"
    bf16 = _parsed(bundle, "inference.json", ["amp_kwargs"], amp_dtype="bfloat16")["amp_kwargs"]
    assert bf16 == {"dtype": torch.bfloat16}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_inference_chooses_device_and_precision_as_training_does(bundle):
    train, inference = (json.loads((bundle / "configs" / f).read_text()) for f in ("train.json", "inference.json"))
    assert [train[k] for k in DEVICE_AND_PRECISION] == [inference[k] for k in DEVICE_AND_PRECISION]
    assert SET_DEVICE in train["initialize"] and SET_DEVICE in inference["initialize"]


def test_no_config_names_a_gpu():
    configs = ROOT.glob("bundles/*/configs/*.json")
    assert [str(p.relative_to(ROOT)) for p in configs if re.search(r"cuda:\d", p.read_text())] == []


@pytest.fixture
def deterministic_afterwards_off(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True


@pytest.mark.usefixtures("single_thread", "deterministic_afterwards_off")
def test_deterministic_training_with_validation_runs_on_the_device_named_by_a_string(tmp_path, mmwhs_dataset):
    # the switch and the device as the command line gives them: strings
    overrides = {"deterministic": "true", "device": "cpu", "num_samples": 1, "max_epochs": 1, "val_interval": 1}
    overrides["train#trainer#epoch_length"] = 2
    workflow = tiny_train_workflow(MMWHS_BUNDLE, mmwhs_dataset, tmp_path, **overrides)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    workflow.run()
    assert workflow.trainer.state.iteration == 2
    assert (tmp_path / "models" / "model.pt").is_file()  # validation ran and saved the best model


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_bfloat16_training_on_the_cpu_warns_at_the_start(bundle):
    for config_file in ("train.json", "multi_gpu_train.json"):
        assert WARN_CPU_BFLOAT16 in json.loads((bundle / "configs" / config_file).read_text())["initialize"]
    with pytest.warns(UserWarning, match="bfloat16 training on the CPU"):
        _parsed(bundle, "train.json", ["initialize"], device="cpu", amp="true", amp_dtype="bfloat16")
