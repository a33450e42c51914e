"""Teacher -> student distillation (EMKD) through the bundles' ``configs/strategy_emkd.json``, as a user runs it.

Training merges the strategy after ``train.json``, evaluation after ``train.json`` + ``evaluate.json``, and inference
merges the plain student, ``configs/student_dynunet.json``, after ``inference.json`` (MONAI only).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from custom.definitions import MMWHS_LABEL_CODES, emkd_term_names
from tests.helpers import (
    BRATS_BUNDLE,
    HIPPOCAMPUS_BUNDLE,
    MMWHS_BUNDLE,
    TINY_NETWORK_KEYS,
    TINY_UNETR,
    assert_bad_input_fails_clearly,
    cli_overrides,
    run_cli,
    tiny_network,
    tiny_train_workflow,
)

BUNDLES = [MMWHS_BUNDLE, BRATS_BUNDLE, HIPPOCAMPUS_BUNDLE]
STRATEGY, STUDENT = "strategy_emkd.json", "student_dynunet.json"
TEACHER_SHAPE = {key: TINY_UNETR[key] for key in TINY_NETWORK_KEYS}
TERMS = emkd_term_names(["low", "high"])

pytestmark = pytest.mark.usefixtures("single_thread")


def _configs(bundle: Path, *names: str) -> list[str]:
    return [str(bundle / "configs" / name) for name in names]


def _student(bundle: Path) -> torch.nn.Module:
    """The deployed student: inference.json with the student file, MONAI only, at the tiny patch size."""
    parser = ConfigParser()
    parser.read_config(_configs(bundle, "inference.json", STUDENT))
    parser["roi_size"] = TINY_UNETR["roi_size"]
    return parser.get_parsed_content("network_def")


# ---- the configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_the_default_student_has_at_most_five_percent_of_the_teachers_parameters(bundle):
    counts = {}
    for name, files in (("teacher", ["train.json"]), ("student", ["inference.json", STUDENT])):
        parser = ConfigParser()
        parser.read_config(_configs(bundle, *files))
        with torch.device("meta"):  # full-size networks without their memory
            counts[name] = sum(p.numel() for p in parser.get_parsed_content("network_def").parameters())
    assert counts["student"] <= 0.05 * counts["teacher"]


def test_the_student_file_is_the_strategys_student_and_needs_no_custom_code():
    strategy, student = (json.loads((MMWHS_BUNDLE / "configs" / name).read_text()) for name in (STRATEGY, STUDENT))
    assert "custom" not in json.dumps(student)
    assert {key: strategy[key] for key in ("student_filters", "network_def")} == {
        key: student[key] for key in ("student_filters", "network_def")
    }
    train, inference = (
        json.loads((MMWHS_BUNDLE / "configs" / n).read_text()) for n in ("train.json", "inference.json")
    )
    # the strategy builds the training network first, then runs train.json's own training
    assert strategy["training"][1:] == train["training"]
    for key in ("in_channels", "num_classes"):
        assert key in train and key in inference


# ---- training in-process, then the literal evaluation command and MONAI-only inference --------------------------


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A teacher ``model.pt`` as the MM-WHS bundle saves it: the plain tiny UNETR's state dict."""
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    torch.manual_seed(0)
    torch.save(tiny_network(MMWHS_BUNDLE).state_dict(), path)
    return path


def _workflow(bundle_root: Path, dataset_dir: Path, files=("train.json", STRATEGY), **overrides) -> ConfigWorkflow:
    """An initialised training of the MM-WHS bundle's configs with the tiny teacher; its outputs in ``bundle_root``."""
    settings = {
        "teacher_configs": _configs(MMWHS_BUNDLE, "train.json"),
        "teacher_overrides": TEACHER_SHAPE,
        "max_epochs": 1,
        "val_interval": 1,
        "num_samples": 1,
        **overrides,
    }
    return tiny_train_workflow(MMWHS_BUNDLE, dataset_dir, bundle_root, files, **settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mmwhs_dataset, teacher_ckpt) -> tuple[Path, ConfigWorkflow]:
    """A copy of the bundle with the teacher at the default ``models/teacher/model.pt``, its student trained one epoch
    by its own configs (the default ``teacher_configs``)."""
    bundle = tmp_path_factory.mktemp("emkd") / MMWHS_BUNDLE.name
    shutil.copytree(MMWHS_BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    (bundle / "models" / "teacher").mkdir(parents=True)
    shutil.copy(teacher_ckpt, bundle / "models" / "teacher" / "model.pt")
    settings = {"max_epochs": 1, "val_interval": 1, "num_samples": 1, "teacher_overrides": TEACHER_SHAPE}
    workflow = tiny_train_workflow(bundle, mmwhs_dataset, bundle, ("train.json", STRATEGY), **settings)
    workflow.run()
    return bundle, workflow


def _scalars(log_dir: Path) -> dict[str, list[float]]:
    scalars: dict[str, list[float]] = {}
    for events in log_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
    return scalars


def test_training_saves_the_plain_student_and_logs_every_term(trained, teacher_ckpt):
    bundle, workflow = trained
    assert sorted(p.name for p in (bundle / "models").iterdir()) == [
        "model.pt",
        "model_final.pt",
        "resume.pt",
        "teacher",
    ]
    teacher = workflow.parser.get_parsed_content("teacher")
    saved = torch.load(teacher_ckpt, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in teacher.state_dict().items())  # frozen through training
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student = workflow.parser.get_parsed_content("network_def")
    optimized = {
        id(p) for group in workflow.parser.get_parsed_content("optimizer").param_groups for p in group["params"]
    }
    assert optimized == {id(p) for p in student.parameters()}

    for name in ("model.pt", "model_final.pt"):  # the plain student, loaded by MONAI alone
        _student(bundle).load_state_dict(torch.load(bundle / "models" / name, weights_only=True), strict=True)
    resume = torch.load(bundle / "models" / "resume.pt", weights_only=True)
    assert set(resume["network"]) == {f"student.{key}" for key in student.state_dict()}
    assert len(resume["optimizer"]["state"]) == len(list(student.parameters()))

    scalars = _scalars(bundle / "eval")
    iterations = len(scalars["train_loss/total"])
    assert iterations > 0
    for term in TERMS:  # per iteration and the epoch mean, as the DSD terms
        assert len(scalars[f"train_loss/{term}"]) == iterations
        assert scalars[f"train_{term}"][0] == pytest.approx(np.mean(scalars[f"train_loss/{term}"]), rel=1e-5)
    assert all(scalars[f"train_{term}"][0] > 0 for term in TERMS)
    assert "val_mean_dice" in scalars


def test_cli_evaluates_the_student_without_the_teacher(trained, mmwhs_dataset, tmp_path):
    bundle, _ = trained
    output_dir = tmp_path / "eval"
    # the teacher is not needed: its default checkpoint does not exist in this folder
    evaluate = [
        "evaluating",
        "--config_file",
        "['configs/train.json','configs/evaluate.json','configs/strategy_emkd.json']",
    ]
    evaluate += ["--output_dir", str(output_dir), "--teacher_ckpt", str(tmp_path / "gone.pt")]
    run_cli(evaluate + cli_overrides(mmwhs_dataset), cwd=bundle, env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(output_dir / "val_mean_dice_raw.csv") as f:
        assert len(f.read().splitlines()) == 2  # header and the validation case of fold 0


def test_the_student_infers_with_monai_alone(trained, mmwhs_dataset, tmp_path):
    bundle, _ = trained
    output_dir = tmp_path / "predictions"
    image = sorted(mmwhs_dataset.glob("*_image.nii.gz"))[0]
    # `--config_file "['configs/inference.json','configs/student_dynunet.json']"` where only MONAI is installed
    with mock.patch.dict(sys.modules, {"custom": None}):
        workflow = ConfigWorkflow(
            config_file=_configs(bundle, "inference.json", STUDENT),
            workflow_type="infer",
            bundle_root=str(bundle),
            dataset_dir=str(mmwhs_dataset),
            output_dir=str(output_dir),
            roi_size=TINY_UNETR["roi_size"],
            datalist=[{"image": str(image)}],
            **{"dataloader#num_workers": 0},
        )
        workflow.initialize()
        workflow.run()
    written = sorted(output_dir.glob("*_seg.nii.gz"))
    assert [p.name for p in written] == [image.name.replace(".nii.gz", "_seg.nii.gz")]
    prediction = nib.load(written[0])
    assert prediction.shape == nib.load(image).shape
    assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, *MMWHS_LABEL_CODES}


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"teacher_ckpt": "{tmp}/missing.pt"}, ["missing.pt", "does not exist"]),
        ({"teacher_overrides": {}}, ["first mismatching key 'vit.patch_embedding.position_embeddings'"]),
        ({"teacher_configs": ["nope.json"]}, ["nope.json", "teacher_configs"]),
        ({"student_taps": {"low": "downsample.0", "high": "bottleneck"}}, ["downsample.0", "'downsamples.0'"]),
        ({"teacher_taps": {"low": "encoder20", "high": "encoder4"}}, ["encoder20", "'encoder2'"]),
        ({"teacher_ckpt": "{tmp}/models/model.pt"}, ["model.pt", "overwrite"]),
    ],
    ids=["missing", "mismatched", "no_config", "student_tap", "teacher_tap", "would_be_overwritten"],
)
def test_bad_teacher_input_fails_before_reading_any_data(tmp_path, teacher_ckpt, bad, expected):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(teacher_ckpt, models / "model.pt")  # an earlier run's output, which must survive
    bad = {key: value.format(tmp=tmp_path) if isinstance(value, str) else value for key, value in bad.items()}
    settings = {"teacher_ckpt": str(teacher_ckpt), **bad}
    # a dataset folder that does not exist: reading data first would fail with another message
    assert_bad_input_fails_clearly(
        lambda: _workflow(tmp_path, tmp_path / "no_data", **settings).run(), expected, models
    )
