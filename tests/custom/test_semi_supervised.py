"""Semi-supervised data: the kept share of labels and its record, the unlabelled images and their readers."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, RandSpatialCropSamplesd, SpatialPadd

from custom.errors import DataError, MissingDataError
from custom.mmwhs import find_mmwhs_unlabelled
from custom.msd import load_image_folder
from custom.semi_supervised import image_only, split_labels, unlabelled_cases

CASES = [{"image": f"/data/case_{i}_image.nii.gz", "label": f"/data/case_{i}_label.nii.gz"} for i in range(1, 21)]


@pytest.mark.parametrize("fraction, kept", [(0.1, 2), (0.25, 5), (0.5, 10), (0.01, 1)])
def test_the_labelled_fraction_and_its_seed_give_the_recorded_list(tmp_path, fraction, kept):
    record = tmp_path / "labelled_cases.json"
    split = split_labels(list(reversed(CASES)), fraction, 7, record)
    assert len(split["labelled"]) == kept and len(split["unlabelled"]) == len(CASES) - kept
    recorded = json.loads(record.read_text())
    assert recorded["labelled"] == split["labelled"] and recorded["unlabelled"] == split["unlabelled"]
    assert (recorded["labelled_fraction"], recorded["labelled_seed"]) == (fraction, 7)
    assert {case["image"] for case in split["labelled"] + split["unlabelled"]} == {case["image"] for case in CASES}
    assert all(set(item) == {"image"} for item in split["unlabelled"])
    # the same seed gives the same list whatever the order of the cases, and reads back the record
    assert split_labels(CASES, fraction, 7, record) == split
    other = split_labels(CASES, fraction, 8, tmp_path / "other.json")["labelled"]
    assert kept == 1 or other != split["labelled"]


def test_a_record_of_another_split_is_refused_and_kept(tmp_path):
    record = tmp_path / "labelled_cases.json"
    split_labels(CASES, 0.25, 0, record)
    before = record.read_text()
    with pytest.raises(ValueError, match=r"labelled_cases\.json records another split.*labelled_seed"):
        split_labels(CASES, 0.25, 1, record)
    assert record.read_text() == before


def test_all_labels_keep_the_training_list_and_record_nothing(tmp_path):
    split = split_labels(CASES, 1.0, 0, tmp_path / "labelled_cases.json")
    assert split == {"labelled": CASES, "unlabelled": []}
    assert not (tmp_path / "labelled_cases.json").exists()


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, "half"])
def test_a_fraction_outside_zero_to_one_is_refused(tmp_path, fraction):
    with pytest.raises(ValueError, match="labelled_fraction must be a number in"):
        split_labels(CASES, fraction, 0, tmp_path / "labelled_cases.json")


@pytest.mark.parametrize("split", ["validation", "test"])
def test_validation_and_test_images_are_never_unlabelled_data(split):
    datalist = {"training": CASES[:10], split: CASES[10:12]}
    assert unlabelled_cases([{"image": "/data/a.nii.gz"}], [{"image": "/data/b.nii.gz"}], datalist) == [
        {"image": "/data/a.nii.gz"},
        {"image": "/data/b.nii.gz"},
    ]
    with pytest.raises(ValueError, match=rf"case_11_image\.nii\.gz is a {split} image"):
        unlabelled_cases([], [{"image": CASES[10]["image"]}], datalist)
    with pytest.raises(ValueError, match="no unlabelled images"):
        unlabelled_cases([], [], datalist)


def test_image_only_transforms_run_without_a_label_and_crop_without_it():
    labelled = [
        SpatialPadd(keys=["image", "label"], spatial_size=(8, 8, 8)),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(4, 4, 4), num_samples=3),
        RandFlipd(keys=["image", "label"], prob=1.0, spatial_axis=0),
    ]
    crop = RandSpatialCropSamplesd(keys="image", roi_size=(4, 4, 4), num_samples=3, random_size=False)
    pipeline = Compose(image_only(labelled, crop))
    crops = pipeline({"image": torch.rand(1, 6, 7, 5)})
    assert len(crops) == 3 and all(set(c) == {"image"} and c["image"].shape == (1, 4, 4, 4) for c in crops)


def _write(path, shape):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)


def test_mmwhs_unlabelled_scans_are_the_ct_test_images_beside_the_training_folder(tmp_path):
    train = tmp_path / "MM-WHS" / "ct_train"
    train.mkdir(parents=True)
    with pytest.raises(MissingDataError, match=r"ct_test: the MM-WHS unlabelled folder .* does not exist; .*--unlabelled_dir"):
        find_mmwhs_unlabelled(train)
    for number in (2010, 2002):
        _write(tmp_path / "MM-WHS" / "ct_test" / f"ct_test_{number}_image.nii.gz", (5, 5, 4))
    assert [item["image"].rsplit("/", 1)[-1] for item in find_mmwhs_unlabelled(train)] == [
        "ct_test_2002_image.nii.gz",
        "ct_test_2010_image.nii.gz",
    ]
    _write(tmp_path / "MM-WHS" / "ct_test" / "ct_test_2003_image.nii.gz", (5, 5, 4, 2))
    with pytest.raises(DataError, match=r"ct_test_2003_image\.nii\.gz: this volume has 2 channels; MM-WHS CT has 1"):
        find_mmwhs_unlabelled(train)


def test_an_unlabelled_folder_is_read_with_its_channels_checked(tmp_path):
    with pytest.raises(MissingDataError, match="missing: the image folder does not exist"):
        load_image_folder(tmp_path / "missing", 4)
    folder = tmp_path / "imagesTs"
    _write(folder / "BRATS_2.nii.gz", (5, 5, 4, 4))
    _write(folder / "BRATS_10.nii.gz", (5, 5, 4, 4))
    (folder / "._BRATS_2.nii.gz").write_bytes(b"junk")
    assert [item["image"].rsplit("/", 1)[-1] for item in load_image_folder(folder, 4)] == [
        "BRATS_2.nii.gz",
        "BRATS_10.nii.gz",
    ]
    with pytest.raises(DataError, match=r"BRATS_2\.nii\.gz: this volume has 4 channels; the image folder has 1"):
        load_image_folder(folder, 1)
    with pytest.raises(DataError, match="the image folder holds no .nii.gz or .nii images"):
        load_image_folder(tmp_path, 1)
