from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from custom.definitions import BRATS_LABEL_NAMES, BRATS_MODALITIES
from custom.msd import load_msd_datalist
from dsd_lab.data.synthetic_msd import make_brats
from tests.helpers import ROOT, run_console

_CASES, _TEST_CASES = 4, 1
_FLAIR, _T1, _T1GD, _T2 = range(4)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("synthetic") / "Task01_BrainTumour"
    return out, make_brats(out, cases=_CASES, test_cases=_TEST_CASES, seed=0)


def _load(path) -> tuple[nib.Nifti1Image, np.ndarray]:
    img = nib.load(path)
    return img, np.asarray(img.dataobj)


def test_msd_layout_with_junk_files(task):
    out, paths = task
    names = [f"BRATS_{i:03d}.nii.gz" for i in range(1, _CASES + _TEST_CASES + 1)]
    train, test = names[:_CASES], names[_CASES:]
    assert sorted(os.listdir(out)) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]
    for folder, expected in (("imagesTr", train), ("labelsTr", train), ("imagesTs", test)):
        assert sorted(os.listdir(out / folder)) == sorted(expected + [f"._{n}" for n in expected])
        for name in expected:  # the junk is not an image, so reading it as data would fail loudly
            with pytest.raises(Exception):
                nib.load(out / folder / f"._{name}").get_fdata()
    assert paths[:2] == [str(out / "imagesTr" / train[0]), str(out / "labelsTr" / train[0])]

    description = json.loads((out / "dataset.json").read_text())
    assert description["modality"] == {str(i): m for i, m in enumerate(BRATS_MODALITIES)}
    assert description["labels"] == {str(i): n for i, n in enumerate(BRATS_LABEL_NAMES)}
    assert (description["numTraining"], description["numTest"]) == (_CASES, _TEST_CASES)
    listed = [item["image"] for item in description["training"]]
    assert sorted(listed) == [f"./imagesTr/{n}" for n in train] != listed  # complete, and unsorted as MSD's
    assert description["training"][0]["label"] == listed[0].replace("imagesTr", "labelsTr")
    assert description["test"] == [f"./imagesTs/{n}" for n in test]
    assert len(load_msd_datalist(out, num_channels=4)) == _CASES


def test_images_are_channel_last_and_labels_uint8_on_the_same_grid(task):
    out, _ = task
    for case in load_msd_datalist(out):
        image, label = nib.load(case["image"]), nib.load(case["label"])
        assert image.ndim == 4 and image.shape[3] == 4 and label.shape == image.shape[:3]
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, label.affine)
        assert nib.aff2axcodes(image.affine) != ("R", "A", "S")
        assert image.header.get_zooms()[:3] == (1.0, 1.0, 1.0)
        assert all(n % 16 for n in image.shape[:3])


@pytest.mark.parametrize("case", range(_CASES))
def test_tumour_structure_and_contrasts(task, case):
    out, _ = task
    image = _load(out / "imagesTr" / f"BRATS_{case + 1:03d}.nii.gz")[1]
    label = _load(out / "labelsTr" / f"BRATS_{case + 1:03d}.nii.gz")[1]
    has_enhancing = case % 4 != 3
    assert set(np.unique(label).tolist()) == ({0, 1, 2, 3} if has_enhancing else {0, 1, 2})
    core = label >= 2
    assert not (binary_dilation(core) & (label == 0)).any()  # edema surrounds the core
    if has_enhancing:
        # the enhancing tumour is the core's shell: the non-enhancing part does not touch the edema
        assert not (binary_dilation(label == 2) & (label == 1)).any()
    assert (image[label == 0] == 0).mean() > 0.5  # skull-stripped: zero outside the brain

    median = {k: np.median(image[label == k], axis=0) for k in np.unique(label) if k}
    brain = np.median(image[(label == 0) & (image[..., _T1] > 0)], axis=0)
    assert median[1][_FLAIR] > 1.5 * brain[_FLAIR]  # edema is bright in FLAIR
    assert median[2][_T2] > median[1][_T2] > brain[_T2]  # the non-enhancing core is brightest in T2w
    if has_enhancing:
        assert median[3][_T1GD] > 1.5 * max(brain[_T1GD], median[1][_T1GD], median[2][_T1GD])


def test_deterministic_per_seed(task, tmp_path):
    out, paths = task
    again = make_brats(tmp_path / "same", cases=1, test_cases=0, seed=0)
    other = make_brats(tmp_path / "other", cases=1, test_cases=0, seed=1)
    for reference, path in zip(paths[:2], again):
        np.testing.assert_array_equal(_load(reference)[1], _load(path)[1])
    assert _load(other[1])[1].shape != _load(paths[1])[1].shape or not np.array_equal(
        _load(other[1])[1], _load(paths[1])[1]
    )


def test_fixed_shape(tmp_path):
    paths = make_brats(tmp_path, cases=1, test_cases=0, shape=(40, 42, 30))
    assert nib.load(paths[0]).shape == (40, 42, 30, 4) and nib.load(paths[1]).shape == (40, 42, 30)


@pytest.mark.parametrize("kwargs", [{"cases": 0}, {"test_cases": -1}, {"seed": -1}, {"shape": (10, 10)}])
def test_invalid_arguments_write_nothing(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_brats(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_refuses_overwrite(tmp_path):
    (tmp_path / "dataset.json").write_text("precious")
    with pytest.raises(FileExistsError, match="dataset.json"):
        make_brats(tmp_path, cases=1)
    assert os.listdir(tmp_path) == ["dataset.json"] and (tmp_path / "dataset.json").read_text() == "precious"


def test_cli(tmp_path):
    out = tmp_path / "Task01_BrainTumour"
    result = run_console("dsd-synthetic", "brats", str(out), "--cases", "3", "--test_cases", "0", cwd=ROOT)
    assert len(result.stdout.strip().splitlines()) == 1 and str(out) in result.stdout
    assert len(load_msd_datalist(out, num_channels=4)) == 3
