"""``--tracking mlflow``: parameters, every loss term and the validation metrics of each training run."""

from __future__ import annotations

import pytest

from custom.definitions import TERM_NAMES
from dsd_lab.experiments.cv import cross_validate
from dsd_lab.experiments.tracking import tracking_settings
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR
from tests.helpers import TINY_UNETR

mlflow = pytest.importorskip("mlflow")


def test_unknown_tracking_names_are_refused(tmp_path):
    assert tracking_settings(None, BUNDLE_DIR, tmp_path, "run") is None
    with pytest.raises(ValueError, match="'wandb' is not supported"):
        tracking_settings("wandb", BUNDLE_DIR, tmp_path, "run")


def test_settings_log_only_parameters_the_bundle_defines(tmp_path):
    brats = tracking_settings("mlflow", BUNDLE_DIR.parent / "dsd_unetr_brats", tmp_path, "DSD")
    params = brats["configs"]["trainer"]["experiment_param"]
    assert params["split_seed"] == "@split_seed" and "fold" not in params


def test_cross_validation_logs_parameters_loss_terms_and_metrics_to_mlflow(tmp_path, mmwhs_dataset):
    work = tmp_path / "runs"
    overrides = {**TINY_UNETR, "num_samples": 1, "max_epochs": 2, "val_interval": 1}
    cross_validate(str(BUNDLE_DIR), str(mmwhs_dataset), folds=1, work_dir=str(work), tracking="mlflow", **overrides)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(work.name)
    (run,) = client.search_runs(experiment.experiment_id)
    assert run.info.run_name == "DSD/fold_1"
    assert run.data.params["ablation"] == "DSD" and run.data.params["fold"] == "1"
    assert float(run.data.params["alpha1"]) == 1.0 and run.data.params["max_epochs"] == "2"
    for term in TERM_NAMES:
        history = client.get_metric_history(run.info.run_id, f"train_{term}")
        assert [m.step for m in history] == [1, 2], term
    assert len(client.get_metric_history(run.info.run_id, "val_mean_dice")) == 2
