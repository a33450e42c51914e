"""The dsd_unetr_mmwhs bundle, run as a user runs it: the literal ``python -m monai.bundle`` commands."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

from custom.definitions import MMWHS_CLASS_NAMES, MMWHS_LABEL_CODES, TERM_NAMES
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR
from tests.helpers import (
    TINY_UNETR,
    assert_exports_match_checkpoint,
    assert_inference_needs_no_custom_code,
    assert_plain_unetr_training_outputs,
    cli_overrides,
    mlflow_runs,
    run_cli,
    run_module,
    tracking_args,
    train_bundle_copy,
)

CONFIGS = BUNDLE_DIR / "configs"
TRAIN, EVALUATE, INFERENCE = "configs/train.json", "configs/evaluate.json", "configs/inference.json"


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory, mmwhs_dataset) -> Path:
    """A copy of the bundle trained for one epoch with the literal training command and MLflow tracking, from the
    bundle root, its validation scoring every head."""
    workspace = tmp_path_factory.mktemp("workspace")
    overrides = {"max_epochs": 1, "val_interval": 1, "score_heads": True}
    return train_bundle_copy(BUNDLE_DIR, workspace, mmwhs_dataset, tracking_args(), **overrides)


HEADS = [f"val_head_dice/{head}" for head in ("E1_encoder1", "E2_encoder2", "E3_encoder3", "E4_encoder4")]
HEADS += [f"val_head_dice/{head}" for head in ("D1_decoder3", "D2_decoder4", "D3_decoder5", "D4_decoder5_input")]


def test_training_writes_plain_unetr_checkpoints_and_loss_terms(trained_bundle):
    assert_plain_unetr_training_outputs(trained_bundle, in_channels=1, out_channels=8, more_tags=HEADS)


def test_training_is_tracked_in_mlflow_with_parameters_loss_terms_and_head_scores(trained_bundle):
    runs = [(run, m) for run, m in mlflow_runs(trained_bundle / "eval" / "mlruns.db") if "train_total" in m]
    ((run, metrics),) = runs
    assert run.info.status == "FINISHED" and run.data.params["ablation"] == "DSD" and run.data.params["fold"] == "0"
    assert run.data.params["eta_encoder"] == "0.0" and run.data.params["class_balanced_crops"] == "False"
    assert all(len(metrics[f"train_{term}"]) == 1 for term in TERM_NAMES)
    assert len(metrics["train_loss"]) == 4  # the total loss of every iteration
    assert all(len(metrics[name]) == 1 and 0.0 <= metrics[name][0] <= 1.0 for name in ["val_mean_dice", *HEADS])


def test_zoo_network_checks_and_torchscript_export_of_the_trained_checkpoint(trained_bundle):
    assert_exports_match_checkpoint(trained_bundle)


def test_short_training_command_from_repository_root(tmp_path, mmwhs_dataset):
    workspace = tmp_path / "repo"
    shutil.copytree(BUNDLE_DIR, workspace / "bundles" / "dsd_unetr_mmwhs")
    bundle_root = "bundles/dsd_unetr_mmwhs"
    args = ["--config_file", f"{bundle_root}/{TRAIN}", "--bundle_root", bundle_root]
    run_cli(args + cli_overrides(mmwhs_dataset, max_epochs=1, val_interval=1, cache_rate=0.0), cwd=workspace)
    assert (workspace / bundle_root / "models" / "model.pt").is_file()


def test_evaluating_writes_per_case_per_class_metrics_and_label_maps(trained_bundle, mmwhs_dataset):
    workspace = trained_bundle.parent
    configs = f"['{trained_bundle.name}/{TRAIN}','{trained_bundle.name}/{EVALUATE}']"
    args = ["evaluating", "--config_file", configs, "--bundle_root", trained_bundle.name, *tracking_args(trained_bundle.name)]
    run_cli(args + cli_overrides(mmwhs_dataset), workspace)
    eval_dir = trained_bundle / "eval"
    for metric in ("val_mean_dice", "val_hd95_mm"):
        with open(eval_dir / f"{metric}_raw.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["filename", *MMWHS_CLASS_NAMES[1:], "mean"]
        assert len(rows) == 2 and rows[1][0].endswith("ct_train_1001_image.nii.gz")  # fold 0 of 5 cases
        with open(eval_dir / f"{metric}_summary.csv", newline="") as f:
            summary = {row["class"]: row for row in csv.DictReader(f)}
        assert list(summary) == [*MMWHS_CLASS_NAMES[1:], "mean"] and {"mean", "std"} <= set(summary["mean"])
    prediction = nib.load(eval_dir / "predictions" / "ct_train_1001_image_seg.nii.gz")
    image = nib.load(mmwhs_dataset / "ct_train_1001_image.nii.gz")
    assert prediction.shape == image.shape
    np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, *MMWHS_LABEL_CODES}
    evaluations = [(run, m) for run, m in mlflow_runs(eval_dir / "mlruns.db") if "train_total" not in m]
    assert [run.info.status for run, _ in evaluations] == ["FINISHED"]
    assert {"val_mean_dice", "val_hd95_mm"} <= set(evaluations[0][1])


def test_inference_writes_original_space_label_maps_with_mmwhs_codes(trained_bundle, mmwhs_dataset, tmp_path):
    output_dir = tmp_path / "predictions"
    overrides = cli_overrides(mmwhs_dataset, output_dir=str(output_dir), ckpt_file="models/model_final.pt")
    inference_overrides = [a for i, a in enumerate(overrides) if not _is_training_only(overrides, i)]
    run_cli(["--config_file", INFERENCE, *tracking_args(), *inference_overrides], cwd=trained_bundle)
    assert [run.info.status for run, _ in mlflow_runs(output_dir / "mlruns.db")] == ["FINISHED"]
    images = sorted(mmwhs_dataset.glob("*_image.nii.gz"))
    written = sorted(output_dir.glob("*_seg.nii.gz"))
    assert [p.name for p in written] == [p.name.replace(".nii.gz", "_seg.nii.gz") for p in images]
    for image_path, prediction_path in zip(images, written):
        image, prediction = nib.load(image_path), nib.load(prediction_path)
        assert prediction.shape == image.shape
        assert nib.aff2axcodes(prediction.affine) == nib.aff2axcodes(image.affine) != ("R", "A", "S")
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, *MMWHS_LABEL_CODES}


def _is_training_only(args: list[str], index: int) -> bool:
    training_only = {"--num_samples", "--learning_rate", "--lr_step_epochs", "--num_workers"}
    return args[index] in training_only or (index > 0 and args[index - 1] in training_only)


@pytest.mark.parametrize(
    "config_files, workflow_type",
    [(["train.json"], "train"), (["train.json", "evaluate.json"], "train"), (["inference.json"], "infer")],
)
def test_config_workflow_properties(config_files, workflow_type, mmwhs_dataset, tmp_path):
    # Resolving the properties builds the datasets and handlers, so the check needs real data and a bundle root.
    if workflow_type == "infer":  # initialize checks that the checkpoint exists; the properties never load it
        (tmp_path / "models").mkdir()
        (tmp_path / "models" / "model.pt").touch()
    workflow = ConfigWorkflow(
        bundle_root=str(tmp_path),
        config_file=[str(CONFIGS / name) for name in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        dataset_dir=str(mmwhs_dataset),
        **({"cache_rate": 0.0} if workflow_type == "train" else {}),
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_inference_config_needs_no_custom_code_and_matches_training_network():
    inference = json.loads((CONFIGS / "inference.json").read_text())
    train = json.loads((CONFIGS / "train.json").read_text())
    assert_inference_needs_no_custom_code(CONFIGS / "inference.json")
    assert inference["network_def"] == train["network_def"]
    assert inference["label_codes"] == [0, *MMWHS_LABEL_CODES]


def test_onnx_export_of_the_trained_network(trained_bundle):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    tiny = {key: TINY_UNETR[key] for key in ("roi_size", "feature_size", "hidden_size", "mlp_dim", "num_heads")}
    args = ["onnx_export", "network_def", "--filepath", "models/model.onnx", "--ckpt_file", "models/model.pt"]
    args += ["--meta_file", "configs/metadata.json", "--config_file", INFERENCE]
    args += ["--input_shape", json.dumps([1, 1, *TINY_UNETR["roi_size"]])]
    args += [arg for key, value in tiny.items() for arg in (f"--{key}", json.dumps(value))]
    run_module("monai.bundle", *args, cwd=trained_bundle)
    model = onnx.load(str(trained_bundle / "models" / "model.onnx"))
    onnx.checker.check_model(model)
    assert [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim] == [1, 1, *TINY_UNETR["roi_size"]]
