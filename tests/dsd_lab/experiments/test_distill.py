"""``dsd-emkd``: the teacher, the distilled student and the student alone, planned through the bundle's configs and
compared in one table with what each deploys."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import dsd_lab.experiments.distill as distill
from dsd_lab.benchmarks.deployed import deployed_facts, inference_parser, preprocessed_volumes
from tests.helpers import BRATS_BUNDLE, MMWHS_BUNDLE

pytestmark = pytest.mark.usefixtures("single_thread")

FACTS = {"parameters": 10, "size_mb": 0.5, "cpu_s_per_volume": 0.25}


def _results(dice: float) -> dict:
    return {
        metric: {"a": {"mean": dice, "std": 0.1}, "mean": {"mean": dice, "std": 0.1}} for metric in ("dice", "hd95")
    }


@pytest.mark.parametrize("bundle, fold_dir", [(MMWHS_BUNDLE, "fold_1"), (BRATS_BUNDLE, None)], ids=["folds", "fixed"])
def test_the_study_trains_teacher_then_students_through_the_bundle_configs(tmp_path, monkeypatch, bundle, fold_dir):
    calls = []

    def fake_run(bundle_dir, run_dir, overrides, config_files=(), tracking=None):
        calls.append((Path(run_dir), dict(overrides), list(config_files)))
        return _results(0.1 * len(calls))

    facts_calls = []
    monkeypatch.setattr(distill, "run_experiment", fake_run)
    monkeypatch.setattr(distill, "deployed_facts", lambda *args: facts_calls.append(args) or FACTS)
    work = tmp_path / "work"
    table = distill.distillation_study(
        str(bundle),
        str(tmp_path),
        fold=1,
        work_dir=str(work),
        configs="backbone_dynunet.json",
        timing_cases=0,
        feature_size=8,
    )
    run_dirs = [run_dir.relative_to(work) for run_dir, _, _ in calls]
    assert run_dirs == [Path(row, fold_dir) if fold_dir else Path(row) for row in ("DSD", "EMKD", "Student")]
    (_, teacher, teacher_files), (_, emkd, emkd_files), (_, alone, alone_files) = calls
    assert teacher_files == ["backbone_dynunet.json"] and teacher["ablation"] == "DSD"
    assert emkd_files == [distill.STRATEGY_CONFIG] and "ablation" not in emkd
    assert emkd["teacher_ckpt"] == str((calls[0][0] / "models" / "model.pt").resolve())
    assert emkd["teacher_configs"] == ["train.json", "backbone_dynunet.json"]
    assert emkd["teacher_overrides"] == {"feature_size": 8} and emkd["feature_size"] == 8
    assert alone_files == [distill.STUDENT_CONFIG] and alone["ablation"] == "Basic"
    assert [args[1] for args in facts_calls] == [
        ["backbone_dynunet.json"],
        ["student_dynunet.json"],
        ["student_dynunet.json"],
    ]

    stem = "emkd_fold1" if fold_dir else "emkd"
    assert table.splitlines()[0].startswith("| model | parameters | model.pt (MB) | CPU s/volume | Dice a |")
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == [f"| {name}" for name in distill.MODELS]
    with open(work / f"{stem}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["model"] for row in rows] == list(distill.MODELS)
    assert float(rows[1]["dice_mean_mean"]) == pytest.approx(0.2) and rows[2]["CPU s/volume"] == "0.25"


def test_the_study_refuses_the_settings_it_makes_itself(tmp_path):
    with pytest.raises(ValueError, match="teacher_ckpt"):
        distill.distillation_study(str(MMWHS_BUNDLE), str(tmp_path), teacher_ckpt="model.pt")


def test_deployed_facts_count_load_and_time_the_inference_network(tmp_path, mmwhs_dataset):
    # max_epochs is no id of inference.json and is left out; no window overlap keeps the timed pass short
    overrides = {"dataset_dir": str(mmwhs_dataset), "roi_size": [32, 32, 32], "max_epochs": 3, "inferer#overlap": 0}
    parser = inference_parser(MMWHS_BUNDLE, [distill.STUDENT_CONFIG], overrides)
    assert "max_epochs" not in parser
    student = parser.get_parsed_content("network_def")
    torch.save(student.state_dict(), tmp_path / "model.pt")
    volumes = preprocessed_volumes(parser, 1)
    assert len(volumes) == 1 and volumes[0].shape[:2] == (1, 1)
    facts = deployed_facts(MMWHS_BUNDLE, [distill.STUDENT_CONFIG], overrides, tmp_path / "model.pt", volumes, 1)
    assert facts["parameters"] == sum(p.numel() for p in student.parameters())
    assert facts["size_mb"] == round((tmp_path / "model.pt").stat().st_size / 2**20, 2)
    assert facts["cpu_s_per_volume"] > 0
    torch.save({"other": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="other"):
        deployed_facts(MMWHS_BUNDLE, [distill.STUDENT_CONFIG], overrides, tmp_path / "other.pt")
