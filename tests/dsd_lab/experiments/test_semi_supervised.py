"""``dsd-dmd``: the semi-supervised study's runs, their settings and its table (the bundle runs are faked here)."""

from __future__ import annotations

import json

import pytest

import dsd_lab.experiments.runs as runs_module
from dsd_lab.experiments.semi_supervised import main, semi_supervised_study
from tests.helpers import HIPPOCAMPUS_BUNDLE
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR


def _fake_results(dice: float) -> dict:
    return {
        "dice": {name: {"mean": dice, "std": 0.1} for name in ("a", "mean")},
        "hd95": {name: {"mean": 10 * dice, "std": 1.0} for name in ("a", "mean")},
    }


@pytest.fixture
def fake_runs(monkeypatch):
    """Record every bundle run instead of running it; each evaluation gives its own fake Dice."""
    calls = []
    monkeypatch.setattr(runs_module, "run_bundle", lambda run_id, configs, *a, **kw: calls.append((run_id, configs, kw)))
    monkeypatch.setattr(runs_module, "collect_results", lambda eval_dir, classes: _fake_results(0.1 * len(calls)))
    return calls


def test_every_row_trains_on_the_same_labels_and_the_dmd_rows_merge_the_strategy(tmp_path, fake_runs):
    work = tmp_path / "runs"
    main([str(BUNDLE_DIR), "--dataset_dir", str(tmp_path), "--fold", "1", "--labelled_fraction", "0.25",
          "--labelled_seed", "3", "--work_dir", str(work), "--max_epochs", "5", "--dmd_rampup_epochs", "2"])
    trainings = [(configs, kw) for run_id, configs, kw in fake_runs if run_id == "training"]
    assert [configs[1:] for configs, _ in trainings] == [[], [], ["strategy_dmd.json"], ["strategy_dmd.json"]]
    assert [kw["ablation"] for _, kw in trainings] == ["Basic", "DSD", "Basic", "DSD"]
    assert {(kw["labelled_fraction"], kw["labelled_seed"], kw["fold"], kw["max_epochs"]) for _, kw in trainings} == {
        (0.25, 3, 1, 5)
    }
    folder = work / "labelled_0.25"
    assert [kw["ckpt_dir"] for _, kw in trainings] == [
        str(folder / row / "fold_1" / "models") for row in ("Basic", "DSD", "DMD", "DMD+DSD")
    ]
    table = (folder / "semi_supervised_fold1.md").read_text()
    lines = table.splitlines()
    assert lines[0] == (
        "| variant | supervised loss | mutual distillation | Dice a | Dice mean | HD95 (mm) a | HD95 (mm) mean |"
    )
    assert lines[4].startswith("| DMD | Basic | lambda 4.0, T 2.0, ramp-up 2 epochs | 0.600 ± 0.100 |")
    assert lines[2].startswith("| Basic | Basic | none |")
    record = json.loads((folder / "DMD+DSD" / "fold_1" / "experiment.json").read_text())
    assert record["config_files"] == ["strategy_dmd.json"] and record["overrides"]["labelled_fraction"] == 0.25


def test_a_bundle_with_a_fixed_split_has_one_run_per_row_and_rows_are_chosen(tmp_path, fake_runs):
    table = semi_supervised_study(
        str(HIPPOCAMPUS_BUNDLE), str(tmp_path), labelled_fraction=0.5, rows="dmd+dsd,basic", work_dir=str(tmp_path)
    )
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == ["| DMD+DSD", "| Basic"]
    assert "fold" not in fake_runs[0][2] and (tmp_path / "labelled_0.5" / "semi_supervised.md").is_file()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rows": "Basic,MT"}, "Unknown row 'MT'"),
        ({"ablation": "DS"}, "--ablation is set by each row"),
        ({"labelled_fraction": 0}, "labelled_fraction must be a number in"),
    ],
)
def test_bad_options_are_refused(tmp_path, fake_runs, options, message):
    with pytest.raises(ValueError, match=message):
        semi_supervised_study(str(BUNDLE_DIR), str(tmp_path), work_dir=str(tmp_path), **options)
    assert fake_runs == []
