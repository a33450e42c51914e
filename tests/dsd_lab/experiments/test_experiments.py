"""Experiment commands: cross-validation (Table 2), ablation (Table 1), evaluation reports (Table 3), their tables."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest

import dsd_lab.experiments.runs as runs_module
from custom.definitions import BRATS_REGIONS, HIPPOCAMPUS_CLASS_NAMES, MMWHS_CLASS_NAMES
from dsd_lab.data.synthetic_msd import make_brats, make_hippocampus
from dsd_lab.experiments.ablation import ablation_study
from dsd_lab.experiments.cv import cross_validate
from dsd_lab.experiments.records import start_record
from dsd_lab.experiments.report import report
from dsd_lab.experiments.results import collect_results
from dsd_lab.experiments.study import as_list
from dsd_lab.experiments.tables import cv_summary, format_cell, write_comparison_tables
from tests.helpers import BRATS_BUNDLE, HIPPOCAMPUS_BUNDLE, TINY_UNETR, cli_overrides, run_console
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR

FAST = {**TINY_UNETR, "num_samples": 1, "max_epochs": 1, "val_interval": 1}
MMWHS_CLASSES = list(MMWHS_CLASS_NAMES[1:])


def _results(dice: dict[str, float], hd95: dict[str, float]) -> dict:
    return {
        "dice": {name: {"mean": value, "std": 0.1} for name, value in dice.items()},
        "hd95": {name: {"mean": value, "std": 1.0} for name, value in hd95.items()},
    }


FAKE_RESULTS = _results({"mean": 0.5}, {"mean": 1.0})


@pytest.mark.parametrize(
    "mean, std, digits, expected",
    [(0.91234, 0.0123, 3, "0.912 ± 0.012"), (12.345, 1.5, 2, "12.35 ± 1.50"), (math.nan, math.nan, 3, "n/a")],
)
def test_format_cell(mean, std, digits, expected):
    assert format_cell(mean, std, digits) == expected


def test_cv_summary_averages_fold_means_and_leaves_out_nan_folds():
    folds = {
        0: _results({"a": 0.8, "mean": 0.7}, {"a": 10.0, "mean": 12.0}),
        1: _results({"a": 0.6, "mean": 0.5}, {"a": math.nan, "mean": 14.0}),
    }
    rows = {row["class"]: row for row in cv_summary(folds)}
    assert rows["a"]["dice_mean"] == pytest.approx(0.7) and rows["a"]["dice_std"] == pytest.approx(0.1)
    assert rows["a"]["hd95_mean"] == 10.0 and rows["a"]["hd95_folds"] == 1  # fold 1 predicted no "a"
    assert rows["mean"]["hd95_mean"] == pytest.approx(13.0) and rows["mean"]["dice_folds"] == 2


def test_comparison_table_has_a_row_per_model_and_dice_hd95_per_class(tmp_path):
    results = {
        "UNETR": _results({"WT": 0.8, "TC": 0.7, "ET": 0.6, "mean": 0.7}, {"WT": 5, "TC": 6, "ET": 7, "mean": 6}),
        "DSD-UNETR": _results({"WT": 0.9, "TC": 0.8, "ET": 0.7, "mean": 0.8}, {"WT": 4, "TC": 5, "ET": 6, "mean": 5}),
    }
    table = write_comparison_tables(results, tmp_path, "table3")
    header = table.splitlines()[0]
    assert header == (
        "| model | Dice WT | Dice TC | Dice ET | Dice mean | HD95 (mm) WT | HD95 (mm) TC | HD95 (mm) ET | HD95 (mm) mean |"
    )
    assert "| DSD-UNETR | 0.900 ± 0.100 |" in table
    with open(tmp_path / "table3.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["model"] for row in rows] == ["UNETR", "DSD-UNETR"]
    assert float(rows[1]["hd95_ET_mean"]) == 6.0
    assert (tmp_path / "table3.md").read_text() == table


@pytest.mark.parametrize("value, expected", [("0,1, 2", ["0", "1", "2"]), ((0, 1), [0, 1]), (3, [3]), ("DSD", ["DSD"])])
def test_cli_lists(value, expected):
    assert as_list(value) == expected


def test_a_run_folder_refuses_other_settings_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(runs_module, "run_bundle", lambda *args, **kwargs: None)
    monkeypatch.setattr(runs_module, "collect_results", lambda eval_dir, classes: FAKE_RESULTS)
    first = runs_module.run_experiment(BUNDLE_DIR, tmp_path / "run", {"max_epochs": 2, "fold": 0})
    assert runs_module.run_experiment(BUNDLE_DIR, tmp_path / "run", {"fold": 0, "max_epochs": 2}) == first
    with pytest.raises(ValueError, match=r"experiment\.json.*max_epochs: 2 there, 3 now"):
        runs_module.run_experiment(BUNDLE_DIR, tmp_path / "run", {"max_epochs": 3, "fold": 0})


def test_an_interrupted_run_resumes_its_training_and_a_finished_one_is_skipped(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runs_module, "run_bundle", lambda run_id, *args, **kwargs: calls.append((run_id, kwargs)))
    monkeypatch.setattr(runs_module, "collect_results", lambda eval_dir, classes: FAKE_RESULTS)
    run_dir = tmp_path / "run"
    (run_dir / "models").mkdir(parents=True)
    start_record(run_dir, {"bundle": str(BUNDLE_DIR), "config_files": [], "overrides": {"fold": 1}})
    (run_dir / "models" / "resume.pt").write_bytes(b"left by a killed training")
    runs_module.run_experiment(BUNDLE_DIR, run_dir, {"fold": 1})
    assert [(run_id, kwargs.get("resume")) for run_id, kwargs in calls] == [("training", True), ("evaluating", None)]
    calls.clear()
    runs_module.run_experiment(BUNDLE_DIR, run_dir, {"fold": 1})
    assert calls == []


@pytest.mark.parametrize("rows, error", [(["WT", "TC", "ET"], None), (["class0", "class1", "class2"], "evaluate the run")])
def test_results_are_read_by_the_class_names_the_summaries_give(tmp_path, rows, error):
    for stem in ("val_mean_dice", "val_hd95_mm"):
        lines = ["class,mean,std"] + [f"{row},0.{i + 1},0.0{i + 1}" for i, row in enumerate([*rows, "mean"])]
        (tmp_path / f"{stem}_summary.csv").write_text("\n".join(lines) + "\n")
    if error:
        with pytest.raises(ValueError, match=f"lacks the rows.*'WT'.*{error}"):
            collect_results(tmp_path, list(BRATS_REGIONS))
        return
    results = collect_results(tmp_path, list(BRATS_REGIONS))
    assert list(results["dice"]) == ["WT", "TC", "ET", "mean"] and results["hd95"]["ET"] == {"mean": 0.3, "std": 0.03}


def test_cv_rejects_a_bundle_without_folds_and_folds_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="defines no 'fold'"):
        cross_validate(str(BRATS_BUNDLE), str(tmp_path))
    with pytest.raises(ValueError, match=r"0\.\.4"):
        cross_validate(str(BUNDLE_DIR), str(tmp_path), folds="0,5")


def test_cross_validation_then_ablation_and_report_share_runs(tmp_path, mmwhs_dataset, monkeypatch):
    work = tmp_path / "runs"
    args = ["--folds", "0,1", "--work_dir", str(work), *cli_overrides(mmwhs_dataset, **FAST)]
    printed = run_console("dsd-cv", str(BUNDLE_DIR), *args).stdout
    summary = (work / "DSD" / "cv_summary.md").read_text()
    assert summary.splitlines()[-1] in printed
    with open(work / "DSD" / "cv_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == [*MMWHS_CLASSES, "mean"]
    assert all(0.0 <= float(row["dice_mean"]) <= 1.0 for row in rows)
    with open(work / "DSD" / "cv_folds.csv", newline="") as f:
        assert {row["fold"] for row in csv.DictReader(f)} == {"0", "1"}

    runs = []
    original = runs_module.run_bundle
    monkeypatch.setattr(
        runs_module, "run_bundle", lambda run_id, *a, **k: runs.append(run_id) or original(run_id, *a, **k)
    )
    overrides = {**FAST, "dataset_dir": str(mmwhs_dataset)}
    table = ablation_study(str(BUNDLE_DIR), fold=0, rows="basic,dsd", work_dir=str(work), **overrides)
    assert runs == ["training", "evaluating"]  # DSD on fold 0 is the cross-validation's run
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == ["| Basic", "| DSD"]
    assert json.loads((work / "DSD" / "fold_0" / "results.json").read_text())["dice"]["mean"]["mean"] == pytest.approx(
        float(table.splitlines()[3].split(" | ")[4 + len(MMWHS_CLASSES)].split(" ± ")[0]), abs=1e-3
    )

    dsd_cells = table.splitlines()[3].split(" | ")[4:]
    dsd_cells[-1] = dsd_cells[-1].removesuffix(" |")
    runs.clear()
    report_dir = tmp_path / "report"
    runs_by_name = {"UNETR": str(work / "Basic" / "fold_0"), "DSD-UNETR": str(work / "DSD" / "fold_0")}
    table = report(str(BUNDLE_DIR), runs_by_name, out_dir=str(report_dir))
    assert runs == [] and (report_dir / "report.csv").is_file()
    assert "| DSD-UNETR |" in table

    # a run trained with MONAI's CLI has no record: the report evaluates it with the options it is given
    cli_run = tmp_path / "cli_trained"
    shutil.copytree(work / "DSD" / "fold_0" / "models", cli_run / "models")
    with pytest.raises(ValueError, match="give --dataset_dir"):
        report(str(BUNDLE_DIR), {"DSD": str(cli_run)})
    options = {**FAST, "fold": 0, "out_dir": str(report_dir)}
    table = report(str(BUNDLE_DIR), {"DSD": str(cli_run)}, dataset_dir=str(mmwhs_dataset), **options)
    assert runs == ["evaluating"]
    assert table.splitlines()[2] == f"| DSD | {' | '.join(dsd_cells)} |"


@pytest.mark.parametrize(
    "bundle, make_data, classes",
    [
        (BRATS_BUNDLE, make_brats, list(BRATS_REGIONS)),
        (HIPPOCAMPUS_BUNDLE, make_hippocampus, list(HIPPOCAMPUS_CLASS_NAMES[1:])),
    ],
    ids=["brats", "hippocampus"],
)
def test_msd_ablation_writes_the_table_of_the_test_split(tmp_path, bundle, make_data, classes):
    data = tmp_path / "task"
    make_data(data, cases=6, seed=1)
    table = ablation_study(
        str(bundle), str(data), rows="Basic,DSD", work_dir=str(tmp_path / "runs"), **{**FAST, "val_interval": 1}
    )
    header = f"| variant | eta | alpha1 | alpha2 | {' | '.join(f'Dice {name}' for name in classes)} | Dice mean |"
    assert table.splitlines()[0].startswith(header)
    assert (tmp_path / "runs" / "ablation.csv").is_file() and (tmp_path / "runs" / "DSD" / "results.json").is_file()
    test_cases = json.loads((tmp_path / "runs" / "DSD" / "eval" / "datalist.json").read_text())["test"]
    with open(tmp_path / "runs" / "DSD" / "eval" / "val_mean_dice_raw.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(test_cases)


def test_report_needs_trained_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"models[/\\]model\.pt"):
        report(str(BUNDLE_DIR), {"DSD": str(tmp_path)}, dataset_dir=str(tmp_path))
