"""The DMD strategy (``configs/strategy_dmd.json``) run as a user runs it: MONAI's CLI, and torchrun with two processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from custom.definitions import dmd_term_names
from custom.mmwhs import fold_datalists
from dsd_lab.data.synthetic_mmwhs import make_mmwhs
from dsd_lab.data.synthetic_msd import make_hippocampus
from tests.helpers import HIPPOCAMPUS_BUNDLE, cli_overrides, error_chain, run_cli, tiny_network, torchrun
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR

# 5 cases in 5 folds: 4 training cases and 1 validation case; 2 unlabelled scans in ct_test/. Under torchrun 2 folds
# (3 validation cases, at least one per process) and no validation, the costly part of a one-epoch run.
TINY = {"num_folds": 5, "max_epochs": 1, "val_interval": 1, "num_samples": 2}
TINY_DDP = {**TINY, "num_folds": 2, "val_interval": 2}
COMMON = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]


@pytest.fixture(scope="module")
def mmwhs_release(tmp_path_factory) -> Path:
    """The MM-WHS release's layout: ``ct_train/`` with five labelled cases, ``ct_test/`` with two unlabelled scans."""
    train = tmp_path_factory.mktemp("MM-WHS") / "ct_train"
    make_mmwhs(train, cases=5, seed=3, test_cases=2)
    return train


def _bundle_copy(workspace: Path) -> Path:
    bundle = workspace / BUNDLE_DIR.name
    shutil.copytree(BUNDLE_DIR, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    return bundle


def _assert_dmd_outputs(bundle: Path, model: str = "model.pt") -> None:
    """Network 1's plain backbone is the model, both networks are in the resume checkpoint, every term is logged."""
    network = tiny_network(bundle)
    network.load_state_dict(torch.load(bundle / "models" / model, weights_only=True), strict=True)
    resume = torch.load(bundle / "models" / "resume.pt", weights_only=True)["network"]
    for name in ("net1", "net2"):
        own = {k.removeprefix(f"{name}.backbone."): v for k, v in resume.items() if k.startswith(f"{name}.backbone.")}
        assert own.keys() == network.state_dict().keys()
    assert any(not torch.equal(resume[f"net1.backbone.{k}"], resume[f"net2.backbone.{k}"]) for k in own)
    tags = set()
    for events in (bundle / "eval").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    terms = dmd_term_names()
    assert {f"train_loss/{t}" for t in terms} | {f"train_{t}" for t in terms} <= tags


def test_dmd_without_dsd_trains_from_the_cli_with_a_tenth_of_the_labels(tmp_path, mmwhs_release):
    bundle = _bundle_copy(tmp_path)
    config = ["--config_file", "['configs/train.json','configs/strategy_dmd.json']"]
    overrides = cli_overrides(mmwhs_release, **TINY, ablation="Basic", labelled_fraction=0.1, labelled_seed=4)
    run_cli(["training", *COMMON, *config, *overrides], cwd=bundle)
    _assert_dmd_outputs(bundle)
    record = json.loads((bundle / "eval" / "labelled_cases.json").read_text())
    training = fold_datalists(mmwhs_release, 0, TINY["num_folds"])["training"]
    assert (record["labelled_fraction"], record["labelled_seed"]) == (0.1, 4)
    assert len(record["labelled"]) == 1 and record["labelled"][0] in training and len(training) == 4
    assert [item["image"] for item in record["unlabelled"]] == [
        case["image"] for case in training if case != record["labelled"][0]
    ]


def test_dmd_with_dsd_trains_under_torchrun_with_the_multi_gpu_config(tmp_path, mmwhs_release):
    bundle = _bundle_copy(tmp_path)
    config = "['configs/train.json','configs/multi_gpu_train.json','configs/strategy_dmd.json']"
    overrides = cli_overrides(mmwhs_release, **TINY_DDP)
    torchrun("-m", "monai.bundle", "run", "--config_file", config, *COMMON, *overrides, cwd=bundle)
    _assert_dmd_outputs(bundle, "model_final.pt")
    events = list((bundle / "eval").glob("events.out.tfevents.*"))
    assert events and len({p.name.split(".")[-2] for p in events}) == 1  # rank 0 logs alone: one process id


def _msd_unlabelled(task: Path, output_dir: Path, **overrides: str) -> tuple[list[dict], dict]:
    parser = ConfigParser()
    parser.read_config([str(HIPPOCAMPUS_BUNDLE / "configs" / name) for name in ("train.json", "strategy_dmd.json")])
    parser.update({"dataset_dir": str(task), "output_dir": str(output_dir), "labelled_fraction": 0.5, **overrides})
    return parser.get_parsed_content("unlabelled#data"), parser.get_parsed_content("datalist")


def test_unlabelled_msd_images_are_the_dropped_labels_and_imagests_never_evaluation_images(tmp_path):
    task = tmp_path / "Task04_Hippocampus"
    make_hippocampus(task, cases=8, test_cases=2, seed=2)
    unlabelled, datalist = _msd_unlabelled(task, tmp_path / "eval")
    images = [Path(item["image"]) for item in unlabelled]
    assert [p.parent.name for p in images].count("imagesTs") == 2
    held_out = {Path(case["image"]) for split in ("validation", "test") for case in datalist[split]}
    assert held_out and not held_out & set(images)
    training = {Path(case["image"]) for case in datalist["training"]}
    assert {p for p in images if p.parent.name == "imagesTr"} < training
    with pytest.raises(Exception) as raised:
        _msd_unlabelled(task, tmp_path / "eval", unlabelled_dir=str(task / "imagesTr"))
    assert "image of this run; validation and test images are never training data" in error_chain(raised.value)
