"""The multi-GPU configs under ``torchrun`` with two CPU processes (gloo), as a user runs them."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from custom.mmwhs import fold_datalists
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR
from tests.helpers import cli_overrides, run_cli, tiny_network, torchrun

# 5 cases in 2 folds: 2 training cases (one per rank) and 3 validation cases (2 + 1).
TINY = {"num_folds": 2, "max_epochs": 1, "val_interval": 1, "num_samples": 2}
TRAIN = "['configs/train.json','configs/multi_gpu_train.json']"
EVALUATE = "['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']"


@pytest.fixture(scope="module")
def ddp_bundle(tmp_path_factory, mmwhs_dataset) -> Path:
    """A copy of the MM-WHS bundle trained by two DDP processes with the literal torchrun command."""
    bundle = tmp_path_factory.mktemp("workspace") / BUNDLE_DIR.name
    shutil.copytree(BUNDLE_DIR, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    args = ["-m", "monai.bundle", "run", "--config_file", TRAIN, "--meta_file", "configs/metadata.json"]
    torchrun(*args, "--logging_file", "configs/logging.conf", *cli_overrides(mmwhs_dataset, **TINY), cwd=bundle)
    return bundle


def test_ddp_training_saves_a_backbone_checkpoint_that_inference_loads(ddp_bundle):
    network = tiny_network(ddp_bundle)
    network.load_state_dict(torch.load(ddp_bundle / "models" / "model.pt", weights_only=True), strict=True)
    assert (ddp_bundle / "models" / "model_final.pt").is_file()


def test_ddp_training_logs_from_rank_zero_only(ddp_bundle):
    # One TensorBoard writer for training and one for validation, both of one process.
    events = sorted((ddp_bundle / "eval").glob("events.out.tfevents.*"))
    assert len(events) == 2 and len({p.name.split(".")[-2] for p in events}) == 1


def test_ddp_evaluation_gathers_every_case_and_matches_one_process(ddp_bundle, mmwhs_dataset):
    overrides = cli_overrides(mmwhs_dataset, num_folds=TINY["num_folds"])
    torchrun("-m", "monai.bundle", "run", "--config_file", EVALUATE, *overrides, cwd=ddp_bundle)
    distributed = _read_raw(ddp_bundle / "eval" / "val_mean_dice_raw.csv")
    single = ["evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']", "--output_dir", "eval_1"]
    run_cli([*single, *overrides], cwd=ddp_bundle)
    one_process = _read_raw(ddp_bundle / "eval_1" / "val_mean_dice_raw.csv")
    cases = [Path(c["image"]).name for c in fold_datalists(mmwhs_dataset, 0, TINY["num_folds"])["validation"]]
    assert sorted(Path(name).name for name in distributed) == sorted(cases)
    assert distributed.keys() == one_process.keys()
    for name, values in distributed.items():
        assert values == pytest.approx(one_process[name], abs=1e-4), name


def _read_raw(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {row[0]: [float(v) for v in row[1:]] for row in rows[1:]}
