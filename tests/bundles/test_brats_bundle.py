"""The dsd_unetr_brats bundle, run as a user runs it: the literal ``python -m monai.bundle`` commands."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from custom.msd import load_msd_datalist, paper_split
from dsd_lab.data.synthetic_msd import make_brats
from tests.helpers import (
    BRATS_BUNDLE,
    TINY_UNETR,
    assert_bad_input_fails_clearly,
    assert_exports_match_checkpoint,
    assert_inference_needs_no_custom_code,
    assert_plain_unetr_training_outputs,
    cli_overrides,
    run_cli,
    train_bundle_copy,
)

BUNDLE_DIR = BRATS_BUNDLE
CONFIGS = BUNDLE_DIR / "configs"
TRAIN, EVALUATE, INFERENCE = "configs/train.json", "configs/evaluate.json", "configs/inference.json"
# 4 cases split 2 / 1 / 1; the test case, BRATS_004, has no enhancing tumour. The grid is not a multiple
# of 16 and thinner than the 32³ patches along its last axis, so that padding and its inversion are exercised.
CASES, TEST_CASES, SHAPE = 4, 1, (41, 38, 30)
FAST = {"num_samples": 2, "max_epochs": 1, "val_interval": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("msd") / "Task01_BrainTumour"
    make_brats(data_dir, cases=CASES, test_cases=TEST_CASES, seed=2, shape=SHAPE)
    return data_dir


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory, dataset) -> Path:
    """A copy of the bundle trained for one epoch with the literal training command, from the bundle root."""
    return train_bundle_copy(BUNDLE_DIR, tmp_path_factory.mktemp("workspace"), dataset, **FAST)


def test_training_writes_plain_unetr_checkpoints_loss_terms_and_the_split(trained_bundle, dataset):
    assert_plain_unetr_training_outputs(trained_bundle, in_channels=4, out_channels=4)

    split = json.loads((trained_bundle / "eval" / "datalist.json").read_text())
    assert split["seed"] == 0
    assert [item["image"] for item in split["test"]] == ["imagesTr/BRATS_004.nii.gz"]
    assert sorted(item["image"] for item in split["training"] + split["validation"]) == [
        f"imagesTr/BRATS_00{i}.nii.gz" for i in (1, 2, 3)
    ]


def test_zoo_network_checks_and_torchscript_export_of_the_trained_checkpoint(trained_bundle):
    assert_exports_match_checkpoint(trained_bundle)


def test_short_training_command_from_repository_root(tmp_path, dataset):
    workspace = tmp_path / "repo"
    shutil.copytree(BUNDLE_DIR, workspace / "bundles" / "dsd_unetr_brats")
    bundle_root = "bundles/dsd_unetr_brats"
    args = ["--config_file", f"{bundle_root}/{TRAIN}", "--bundle_root", bundle_root]
    run_cli(args + cli_overrides(dataset, **{**FAST, "val_interval": 2}), cwd=workspace)  # no validation: faster
    assert (workspace / bundle_root / "models" / "model_final.pt").is_file()
    assert (workspace / bundle_root / "eval" / "datalist.json").is_file()


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_evaluating_writes_region_and_label_metrics_of_the_test_split(trained_bundle, dataset):
    workspace = trained_bundle.parent
    configs = f"['{trained_bundle.name}/{TRAIN}','{trained_bundle.name}/{EVALUATE}']"
    args = ["evaluating", "--config_file", configs, "--bundle_root", trained_bundle.name]
    run_cli(args + cli_overrides(dataset), workspace)
    eval_dir = trained_bundle / "eval"
    label = nib.load(dataset / "labelsTr" / "BRATS_004.nii.gz")
    diagonal = math.dist((0, 0, 0), label.shape)  # 1 mm voxels
    for metric in ("val_mean_dice", "val_hd95_mm", "val_label_dice", "val_label_hd95_mm"):
        rows = _read_csv(eval_dir / f"{metric}_raw.csv")
        names = ["WT", "TC", "ET"] if "label" not in metric else ["edema", "non_enhancing_tumour", "enhancing_tumour"]
        assert rows[0] == ["filename", *names, "mean"]
        assert len(rows) == 2 and rows[1][0].endswith("BRATS_004.nii.gz")  # the test split
        values = [float(v) for v in rows[1][1:]]
        assert not any(math.isnan(v) for v in values)  # ET is absent from this case's ground truth
        assert values[-1] == pytest.approx(sum(values[:-1]) / 3, rel=1e-5)
        # BraTS convention for the empty ET: Dice 1 or 0, HD95 0 or the grid diagonal
        allowed = (0.0, 1.0) if metric.endswith("dice") else (0.0, pytest.approx(diagonal))
        assert values[2] in allowed
        summary = {row[0]: row for row in _read_csv(eval_dir / f"{metric}_summary.csv")[1:]}
        assert list(summary) == [*names, "mean"] and "nan" not in summary["mean"]
    prediction = nib.load(eval_dir / "predictions" / "BRATS_004_seg.nii.gz")
    assert prediction.shape == label.shape and prediction.get_data_dtype() == np.uint8
    np.testing.assert_allclose(prediction.affine, label.affine, atol=1e-4)
    assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}


def test_inference_segments_the_test_images_in_their_original_space(trained_bundle, dataset, tmp_path):
    output_dir = tmp_path / "predictions"
    overrides = {key: TINY_UNETR[key] for key in ("roi_size", "feature_size", "hidden_size", "mlp_dim", "num_heads")}
    values = {**overrides, "dataset_dir": str(dataset), "output_dir": str(output_dir), "num_workers": 0}
    args = [arg for key, value in values.items() for arg in (f"--{key}", json.dumps(value))]
    run_cli(["--config_file", INFERENCE, *args], cwd=trained_bundle)
    images = load_msd_datalist(dataset, key="test")
    written = sorted(output_dir.iterdir())
    assert [p.name for p in written] == [Path(i["image"]).name.replace(".nii.gz", "_seg.nii.gz") for i in images]
    for item, prediction_path in zip(images, written):
        image, prediction = nib.load(item["image"]), nib.load(prediction_path)
        assert prediction.shape == image.shape[:3] and prediction.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(prediction.affine) == nib.aff2axcodes(image.affine) != ("R", "A", "S")
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}


@pytest.mark.parametrize(
    "layout, key, expected",
    [
        ("task", "test", ["imagesTs/BRATS_005.nii.gz"]),
        ("task", "training", [f"imagesTr/BRATS_00{i}.nii.gz" for i in range(1, 5)]),
        ("folder", "test", ["BRATS_001.nii.gz", "BRATS_005.nii.gz"]),
    ],
)
def test_inference_inputs_never_include_junk_files(dataset, tmp_path, layout, key, expected):
    if layout == "folder":  # a plain folder of images, junk files included
        root = tmp_path / "scans"
        root.mkdir()
        for image in (dataset / "imagesTr" / "BRATS_001.nii.gz", dataset / "imagesTs" / "BRATS_005.nii.gz"):
            shutil.copy(image, root / image.name)
            shutil.copy(image.parent / f"._{image.name}", root / f"._{image.name}")
    else:
        root = dataset
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"dataset_dir": str(root), "datalist_key": key})
    images = [Path(item["image"]).relative_to(root).as_posix() for item in parser.get_parsed_content("datalist")]
    assert sorted(images) == expected


def test_inference_config_needs_no_custom_code_and_matches_training_network():
    inference = json.loads((CONFIGS / "inference.json").read_text())
    train = json.loads((CONFIGS / "train.json").read_text())
    assert_inference_needs_no_custom_code(CONFIGS / "inference.json")
    assert inference["network_def"] == train["network_def"]
    for key in ("in_channels", "num_classes", "roi_size", "feature_size", "hidden_size", "mlp_dim", "num_heads"):
        assert inference[key] == train[key], key
    assert (train["in_channels"], train["num_classes"], train["feature_size"]) == (4, 4, 16)


def test_metadata_describes_the_network_io():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    required = ["schema", "version", "monai_version", "pytorch_version", "numpy_version"]
    required += ["required_packages_version", "task", "description", "authors", "copyright", "network_data_format"]
    assert all(metadata.get(key) for key in required)
    io = metadata["network_data_format"]
    image, pred = io["inputs"]["image"], io["outputs"]["pred"]
    train = json.loads((CONFIGS / "train.json").read_text())
    assert image["num_channels"] == train["in_channels"] and pred["num_channels"] == train["num_classes"]
    assert list(image["channel_def"].values()) == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert image["spatial_shape"] == pred["spatial_shape"] == train["roi_size"]


@pytest.mark.parametrize(
    "config_files, workflow_type",
    [(["train.json"], "train"), (["train.json", "evaluate.json"], "train"), (["inference.json"], "infer")],
)
def test_config_workflow_properties(config_files, workflow_type, dataset, tmp_path):
    # Resolving the properties builds the datasets and handlers, so the check needs real data and a bundle root.
    tiny = {key: TINY_UNETR[key] for key in ("roi_size", "feature_size", "hidden_size", "mlp_dim", "num_heads")}
    if workflow_type == "infer":  # initialize checks that the checkpoint exists; the properties never load it
        (tmp_path / "models").mkdir()
        (tmp_path / "models" / "model.pt").touch()
    workflow = ConfigWorkflow(
        bundle_root=str(tmp_path),
        config_file=[str(CONFIGS / name) for name in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        dataset_dir=str(dataset),
        **tiny,
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_bundle_regions_follow_the_msd_label_meanings():
    """The bundle's validation post-processing on a volume whose labels 2 and 3 lie apart."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    assert parser.get_parsed_content("regions") == [[1, 2, 3], [2, 3], [3]]
    label = torch.zeros(1, 8, 8, 8)
    label[0, 1:7, 1:7, 1:7] = 1
    label[0, 1:3, 1:3, 1:3] = 2
    label[0, 5:7, 5:7, 5:7] = 3
    logits = torch.nn.functional.one_hot(label[0].long(), 4).permute(3, 0, 1, 2).float()
    out = parser.get_parsed_content("validate#postprocessing")({"pred": logits, "label": label})
    for key in ("pred_regions", "label_regions"):
        whole, core, enhancing = out[key]
        assert torch.equal(whole.bool(), label[0] > 0)
        assert torch.equal(core.bool(), label[0] >= 2)
        assert torch.equal(enhancing.bool(), label[0] == 3)
    assert out["pred"].shape[0] == out["label"].shape[0] == 4  # one-hot labels for the per-label metrics


def _train_in_process(bundle_root: Path, dataset_dir: Path) -> None:
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset_dir),
        **{**TINY_UNETR, **FAST, "val_interval": 2},
    )
    workflow.initialize()
    workflow.run()


def _training_case(data_dir: Path) -> tuple[Path, Path]:
    case = paper_split(load_msd_datalist(data_dir))["training"][0]
    return Path(case["image"]), Path(case["label"])


def _rewrite(path: Path, change) -> None:
    image = nib.load(path)
    data = change(np.asarray(image.dataobj).copy())
    nib.save(nib.Nifti1Image(data, image.affine, image.header), path)


def _break_channels(data_dir: Path) -> tuple[str, ...]:
    image = data_dir / "imagesTr" / "BRATS_002.nii.gz"
    _rewrite(image, lambda data: data[..., :3])
    return ("imagesTr/BRATS_002.nii.gz", "channel")


def _break_missing_file(data_dir: Path) -> tuple[str, ...]:
    (data_dir / "labelsTr" / "BRATS_003.nii.gz").unlink()
    return ("dataset.json", "labelsTr/BRATS_003.nii.gz")


def _break_missing_dataset_json(data_dir: Path) -> tuple[str, ...]:
    (data_dir / "dataset.json").unlink()
    return (str(data_dir / "dataset.json"),)


def _break_nan(data_dir: Path) -> tuple[str, ...]:
    image = _training_case(data_dir)[0]

    def add_nan(data: np.ndarray) -> np.ndarray:
        data[10, 10, 10, 1] = np.nan
        return data

    _rewrite(image, add_nan)
    return (image.name, "NaN")


def _break_brats2018_code(data_dir: Path) -> tuple[str, ...]:
    label = _training_case(data_dir)[1]
    _rewrite(label, lambda data: np.where(data == 3, 4, data).astype(np.uint8))  # BraTS 2018 coding
    return (label.name, "4")


@pytest.mark.parametrize(
    "break_dataset",
    [
        pytest.param(_break_channels, id="wrong-channel-count"),
        pytest.param(_break_missing_file, id="listed-file-missing"),
        pytest.param(_break_missing_dataset_json, id="no-dataset-json"),
        pytest.param(_break_nan, id="nan-voxels"),
        pytest.param(_break_brats2018_code, id="brats2018-label-code"),
    ],
)
def test_bad_input_fails_clearly_and_keeps_earlier_outputs(tmp_path, dataset, break_dataset):
    data_dir = tmp_path / "Task01_BrainTumour"
    shutil.copytree(dataset, data_dir)
    expected_parts = break_dataset(data_dir)
    models = tmp_path / "models"
    models.mkdir()
    earlier = {"model.pt": b"earlier best", "model_final.pt": b"earlier final"}
    for name, content in earlier.items():
        (models / name).write_bytes(content)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert_bad_input_fails_clearly(lambda: _train_in_process(tmp_path, data_dir), expected_parts, models)
    finally:
        torch.set_num_threads(threads)
