"""The dsd_unetr_hippocampus bundle (MSD Task04), run as a user runs it: the literal ``python -m monai.bundle`` commands."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor

from custom.definitions import HIPPOCAMPUS_CLASS_NAMES
from custom.msd import HIPPOCAMPUS_SPLIT, load_msd_datalist, paper_split
from dsd_lab.data.synthetic_msd import make_hippocampus
from tests.helpers import (
    HIPPOCAMPUS_BUNDLE,
    TINY_NETWORK_KEYS,
    TINY_UNETR,
    assert_bad_input_fails_clearly,
    assert_inference_needs_no_custom_code,
    assert_plain_unetr_training_outputs,
    cli_overrides,
    run_cli,
    train_bundle_copy,
)

CONFIGS = HIPPOCAMPUS_BUNDLE / "configs"
TRAIN, EVALUATE, INFERENCE = "configs/train.json", "configs/evaluate.json", "configs/inference.json"
# 7 labelled cases split 4 / 1 / 2 by the Task04 rule; the volumes are MSD-sized, so the tiny UNETR trains in seconds.
CASES, TEST_CASES = 7, 2
FAST = {"num_samples": 2, "max_epochs": 1, "val_interval": 1}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("msd") / "Task04_Hippocampus"
    make_hippocampus(data_dir, cases=CASES, test_cases=TEST_CASES, seed=4)
    return data_dir


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory, dataset) -> Path:
    """A copy of the bundle trained for one epoch with the literal training command, from the bundle root."""
    return train_bundle_copy(HIPPOCAMPUS_BUNDLE, tmp_path_factory.mktemp("workspace"), dataset, **FAST)


def test_training_writes_plain_unetr_checkpoints_loss_terms_and_the_task04_split(trained_bundle, dataset):
    assert_plain_unetr_training_outputs(trained_bundle, in_channels=1, out_channels=3)
    split = json.loads((trained_bundle / "eval" / "datalist.json").read_text())
    assert split["seed"] == 0 and "DSD authors' MSD Task04 split" in split["description"]
    names = sorted(Path(c["image"]).name for c in load_msd_datalist(dataset))
    assert [Path(item["image"]).name for item in split["test"]] == names[-2:]  # the last cases in sorted order
    assert (len(split["training"]), len(split["validation"])) == (4, 1)


def test_evaluating_from_the_repository_root_scores_the_test_split(trained_bundle, dataset):
    workspace = trained_bundle.parent
    configs = f"['{trained_bundle.name}/{TRAIN}','{trained_bundle.name}/{EVALUATE}']"
    run_cli(["evaluating", "--config_file", configs, "--bundle_root", trained_bundle.name, *cli_overrides(dataset)],
            workspace)  # fmt: skip
    eval_dir = trained_bundle / "eval"
    test_cases = json.loads((eval_dir / "datalist.json").read_text())["test"]
    for metric in ("val_mean_dice", "val_hd95_mm"):
        with open(eval_dir / f"{metric}_raw.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0][1:] == ["anterior", "posterior", "mean"]
        assert sorted(Path(row[0]).name for row in rows[1:]) == sorted(Path(c["image"]).name for c in test_cases)
    for case in test_cases:
        name = Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        prediction, label = nib.load(eval_dir / "predictions" / name), nib.load(dataset / case["label"])
        assert prediction.shape == label.shape and prediction.get_data_dtype() == np.uint8
        np.testing.assert_allclose(prediction.affine, label.affine, atol=1e-4)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2}


def test_inference_segments_the_test_images_in_their_original_space(trained_bundle, dataset, tmp_path):
    output_dir = tmp_path / "predictions"
    values = {key: TINY_UNETR[key] for key in TINY_NETWORK_KEYS}
    values.update({"dataset_dir": str(dataset), "output_dir": str(output_dir), "num_workers": 0})
    run_cli(["--config_file", INFERENCE, *[a for k, v in values.items() for a in (f"--{k}", json.dumps(v))]],
            cwd=trained_bundle)  # fmt: skip
    images = load_msd_datalist(dataset, key="test", num_channels=1)
    written = sorted(p.name for p in output_dir.iterdir())
    assert written == sorted(Path(i["image"]).name.replace(".nii.gz", "_seg.nii.gz") for i in images)
    for item in images:
        image = nib.load(item["image"])
        prediction = nib.load(output_dir / Path(item["image"]).name.replace(".nii.gz", "_seg.nii.gz"))
        assert prediction.shape == image.shape
        assert nib.aff2axcodes(prediction.affine) == nib.aff2axcodes(image.affine) != ("R", "A", "S")


def test_the_split_of_the_full_task_is_the_authors_170_30_60():
    cases = [{"image": f"/d/imagesTr/hippocampus_{i:03d}.nii.gz", "label": "x"} for i in range(1, 261)]
    split = paper_split(cases[::-1], seed=0, rule=HIPPOCAMPUS_SPLIT)
    assert [len(split[key]) for key in ("training", "validation", "test")] == [170, 30, 60]
    assert split["test"] == cases[-60:]


def test_metrics_of_a_case_with_known_answers():
    """The bundle's validation metrics on a prediction whose Dice and HD95 are known: anterior exact, posterior
    shifted by 2 voxels of 1.5 mm along the first axis."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    label = torch.zeros(1, 12, 10, 10)
    label[0, 2:6, 2:6, 2:6] = 1
    label[0, 6:10, 2:6, 2:6] = 2
    predicted = label.clone()
    predicted[0, 6:10] = 0
    predicted[0, 8:12, 2:6, 2:6] = 2
    affine = torch.diag(torch.tensor([1.5, 1.0, 1.0, 1.0]))
    logits = torch.nn.functional.one_hot(predicted[0].long(), 3).permute(3, 0, 1, 2).float()
    item = parser.get_parsed_content("validate#postprocessing")(
        {"pred": MetaTensor(logits, affine=affine), "label": MetaTensor(label, affine=affine)}
    )
    batch = {"y_pred": item["pred"][None], "y": item["label"][None]}
    dice = parser.get_parsed_content("validate#key_metric#val_mean_dice").metric_fn
    hd95 = parser.get_parsed_content("validate#additional_metrics#val_hd95_mm").metric_fn
    torch.testing.assert_close(dice(**batch)[0], torch.tensor([1.0, 0.5]))  # 2 of 4 posterior slices overlap
    torch.testing.assert_close(hd95(**batch)[0].float(), torch.tensor([0.0, 3.0]))  # 2 voxels of 1.5 mm


@pytest.mark.parametrize(
    "config_files, workflow_type",
    [(["train.json"], "train"), (["train.json", "evaluate.json"], "train"), (["inference.json"], "infer")],
)
def test_config_workflow_properties(config_files, workflow_type, dataset, tmp_path):
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
        **{key: TINY_UNETR[key] for key in TINY_NETWORK_KEYS},
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_inference_config_needs_no_custom_code_and_matches_training():
    inference, train = (json.loads((CONFIGS / name).read_text()) for name in ("inference.json", "train.json"))
    assert_inference_needs_no_custom_code(CONFIGS / "inference.json")
    assert inference["network_def"] == train["network_def"]
    for key in ("in_channels", "num_classes", "roi_size", "feature_size", "hidden_size", "mlp_dim", "num_heads"):
        assert inference[key] == train[key], key
    assert (train["in_channels"], train["num_classes"], train["roi_size"]) == (1, 3, [32, 32, 32])
    assert train["num_classes"] == len(HIPPOCAMPUS_CLASS_NAMES)


@pytest.mark.parametrize("override", [None, "backbone_dynunet.json", "backbone_swinunetr.json", "backbone_segresnet.json"])
def test_every_backbone_trains_a_dsd_step_at_its_configured_patch_size(override):
    """Shrunk in width only: the patch size is the bundle's, which SwinUNETR's depth constrains."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")] + ([str(CONFIGS / override)] if override else []))
    narrow = {"feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4, "dynunet_filters": [4, 8, 16, 32, 32],
              "swinunetr_feature_size": 12, "swinunetr_depths": [1, 1, 1, 1], "segresnet_init_filters": 8}  # fmt: skip
    for key, value in narrow.items():
        parser[key] = value
    network, loss = parser.get_parsed_content("dsd_network"), parser.get_parsed_content("loss")
    roi = parser.get_parsed_content("roi_size")
    x, y = torch.rand(1, 1, *roi), torch.randint(0, 3, (1, 1, *roi))
    value = loss(network.train()(x), y)
    value.backward()
    assert torch.isfinite(value) and all(p.grad is not None for p in network.heads.parameters())


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
    case = paper_split(load_msd_datalist(data_dir), rule=HIPPOCAMPUS_SPLIT)["training"][0]
    return Path(case["image"]), Path(case["label"])


def _rewrite(path: Path, change) -> None:
    image = nib.load(path)
    nib.save(nib.Nifti1Image(change(np.asarray(image.dataobj).copy()), image.affine, image.header), path)


def _break_missing_file(data_dir: Path) -> tuple[str, ...]:
    label = _training_case(data_dir)[1]
    label.unlink()
    return ("dataset.json", f"labelsTr/{label.name}")


def _break_4d_image(data_dir: Path) -> tuple[str, ...]:
    image = _training_case(data_dir)[0]
    _rewrite(image, lambda data: np.stack([data, data], axis=-1))
    return (f"imagesTr/{image.name}", "this volume has 2 channels", "has 1", "3-D")


def _break_label_code(data_dir: Path) -> tuple[str, ...]:
    label = _training_case(data_dir)[1]
    _rewrite(label, lambda data: np.where(data == 2, 3, data).astype(np.uint8))
    return (label.name, "3")


def _break_nan(data_dir: Path) -> tuple[str, ...]:
    image = _training_case(data_dir)[0]

    def add_nan(data: np.ndarray) -> np.ndarray:
        data[5, 5, 5] = np.nan
        return data

    _rewrite(image, add_nan)
    return (image.name, "NaN")


def _break_shape(data_dir: Path) -> tuple[str, ...]:
    label = _training_case(data_dir)[1]
    _rewrite(label, lambda data: data[:-2])
    return (f"labelsTr/{label.name}", "shape")


@pytest.mark.parametrize(
    "break_dataset",
    [
        pytest.param(_break_missing_file, id="listed-file-missing"),
        pytest.param(_break_4d_image, id="4d-image"),
        pytest.param(_break_label_code, id="label-code-3"),
        pytest.param(_break_nan, id="nan-voxel"),
        pytest.param(_break_shape, id="shape-mismatch"),
    ],
)
def test_bad_input_fails_clearly_and_keeps_earlier_outputs(tmp_path, dataset, break_dataset):
    data_dir = tmp_path / "Task04_Hippocampus"
    shutil.copytree(dataset, data_dir)
    expected_parts = break_dataset(data_dir)
    models = tmp_path / "models"
    models.mkdir()
    for name, content in {"model.pt": b"earlier best", "model_final.pt": b"earlier final"}.items():
        (models / name).write_bytes(content)
    assert_bad_input_fails_clearly(lambda: _train_in_process(tmp_path, data_dir), expected_parts, models)
