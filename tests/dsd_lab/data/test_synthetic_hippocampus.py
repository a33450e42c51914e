"""``dsd-synthetic hippocampus``: a dataset in the exact MSD Task04 layout with learnable anterior/posterior parts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.definitions import HIPPOCAMPUS_CLASS_NAMES
from custom.msd import load_msd_datalist
from dsd_lab.data.synthetic_msd import make_hippocampus
from tests.helpers import ROOT, run_console

CASES, TEST_CASES = 5, 2
NAMES = ["hippocampus_001", "hippocampus_002", "hippocampus_003", "hippocampus_005", "hippocampus_006",
         "hippocampus_007", "hippocampus_009"]  # fmt: skip


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "Task04_Hippocampus"
    make_hippocampus(out, cases=CASES, test_cases=TEST_CASES, seed=0)
    return out


def test_msd_task04_layout_with_gaps_in_the_numbers_and_junk_files(task):
    train, test = [f"{n}.nii.gz" for n in NAMES[:CASES]], [f"{n}.nii.gz" for n in NAMES[CASES:]]
    assert sorted(os.listdir(task)) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]
    for folder, expected in (("imagesTr", train), ("labelsTr", train), ("imagesTs", test)):
        assert sorted(os.listdir(task / folder)) == sorted(expected + [f"._{n}" for n in expected])
    description = json.loads((task / "dataset.json").read_text())
    assert description["tensorImageSize"] == "3D" and description["modality"] == {"0": "MRI"}
    assert description["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert (description["numTraining"], description["numTest"]) == (CASES, TEST_CASES)
    listed = [item["image"] for item in description["training"]]
    assert sorted(listed) == [f"./imagesTr/{n}" for n in train] and listed != sorted(listed)  # MSD lists unsorted
    assert description["test"] == [f"./imagesTs/{n}" for n in test]


def test_volumes_are_3d_t1_crops_with_anterior_in_front_of_posterior(task):
    for case in load_msd_datalist(task, num_channels=1):
        image, label = nib.load(case["image"]), nib.load(case["label"])
        assert len(image.shape) == 3 and image.shape == label.shape and not any(n % 16 == 0 for n in image.shape)
        assert 28 <= min(image.shape) and max(image.shape) <= 58  # MSD's crops: about 35 x 50 x 35
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        data = np.asarray(label.dataobj)
        assert set(np.unique(data)) == set(range(len(HIPPOCAMPUS_CLASS_NAMES)))
        ras = nib.as_closest_canonical(label)
        world = np.asarray(ras.dataobj)
        anterior, posterior = (np.argwhere(world == code)[:, 1].mean() for code in (1, 2))
        assert anterior > posterior  # the head lies in front (A+) of the body and tail
        pixels = np.asarray(image.dataobj)
        inside, outside = np.median(pixels[data > 0]), np.median(pixels[data == 0])
        assert inside - outside > 30  # brighter than the grey matter around it, darker than white matter


def test_cases_depend_only_on_seed_and_index(tmp_path, task):
    make_hippocampus(tmp_path / "more", cases=CASES + 1, test_cases=0, seed=0)
    for name in NAMES[:CASES]:
        first = np.asarray(nib.load(task / "labelsTr" / f"{name}.nii.gz").dataobj)
        again = np.asarray(nib.load(tmp_path / "more" / "labelsTr" / f"{name}.nii.gz").dataobj)
        assert np.array_equal(first, again)


def test_command_line_refuses_to_overwrite(tmp_path):
    out = tmp_path / "Task04_Hippocampus"
    result = run_console("dsd-synthetic", "hippocampus", str(out), "--cases", "2", "--test_cases", "0", cwd=ROOT)
    assert "Wrote 2 + 0 synthetic Hippocampus case(s)" in result.stdout
    with pytest.raises(FileExistsError, match="dataset.json"):
        make_hippocampus(out, cases=2)
