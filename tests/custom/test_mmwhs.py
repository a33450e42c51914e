from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.definitions import MMWHS_BACKGROUND_CODES, MMWHS_CLASS_NAMES, MMWHS_LABEL_CODES
from custom.errors import DataError
from custom.mmwhs import (
    find_mmwhs_cases,
    fold_datalists,
    kfold_split,
    load_datalist,
    mmwhs_cases,
)


def _write(path: Path, shape=(4, 5, 3)) -> Path:
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), path)
    return path


def _make_dataset(root: Path, ids=(1001, 1002, 1003), shape=(4, 5, 3)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in ids:
        _write(root / f"ct_train_{i}_image.nii.gz", shape)
        _write(root / f"ct_train_{i}_label.nii.gz", shape)
    return root


def test_constants():
    assert sorted(MMWHS_LABEL_CODES.values()) == list(range(1, 8))
    assert len(MMWHS_CLASS_NAMES) == 8 and MMWHS_CLASS_NAMES[0] == "background"
    assert all(name.isidentifier() and name.islower() for name in MMWHS_CLASS_NAMES)
    assert 421 in MMWHS_BACKGROUND_CODES and not set(MMWHS_BACKGROUND_CODES) & set(MMWHS_LABEL_CODES)


@pytest.mark.parametrize(
    "num_cases, num_folds, sizes",
    [(20, 5, [4, 4, 4, 4, 4]), (7, 5, [2, 2, 1, 1, 1]), (10, 3, [4, 3, 3]), (5, 5, [1, 1, 1, 1, 1])],
)
def test_kfold_split_sizes_and_coverage(num_cases, num_folds, sizes):
    cases = list(range(num_cases))
    folds = []
    for fold in range(num_folds):
        train, val = kfold_split(cases, num_folds=num_folds, fold=fold)
        assert sorted(train + val) == cases
        assert train == [c for c in cases if c not in val]
        folds.append(val)
    assert [len(v) for v in folds] == sizes
    assert sum(folds, []) == cases  # contiguous folds, each case validated exactly once


def test_kfold_split_fold0_is_first_cases():
    cases = [f"case{i:02d}" for i in range(20)]
    train, val = kfold_split(cases, num_folds=5, fold=0)
    assert val == cases[:4] and train == cases[4:]


@pytest.mark.parametrize(
    "num_cases, num_folds, fold, match",
    [(10, 5, 5, "fold"), (10, 5, -1, "fold"), (3, 5, 0, "3 cases into 5 folds"), (10, 1, 0, "num_folds")],
)
def test_kfold_split_errors(num_cases, num_folds, fold, match):
    with pytest.raises(ValueError, match=match):
        kfold_split(list(range(num_cases)), num_folds=num_folds, fold=fold)


def test_find_mmwhs_cases_sorted_by_case_id(tmp_path):
    root = _make_dataset(tmp_path / "mmwhs", ids=(1010, 1002, 999, 1001))
    (root / "._ct_train_1001_image.nii.gz").write_bytes(b"\x00\x05junk")  # macOS resource fork
    (root / "._ct_train_1004_label.nii.gz").write_bytes(b"\x00\x05junk")
    cases = find_mmwhs_cases(root)
    assert [Path(c["image"]).name for c in cases] == [f"ct_train_{i}_image.nii.gz" for i in (999, 1001, 1002, 1010)]
    assert all(c["label"] == c["image"].replace("_image.", "_label.") for c in cases)
    assert all(Path(c["image"]).is_absolute() and Path(c["label"]).is_absolute() for c in cases)


def test_find_mmwhs_cases_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_mmwhs_cases(tmp_path / "nowhere")


def test_find_mmwhs_cases_not_a_dir(tmp_path):
    path = _write(tmp_path / "ct_train_1001_image.nii.gz")
    with pytest.raises(DataError, match="ct_train_1001_image.*not a folder"):
        find_mmwhs_cases(path)


def test_find_mmwhs_cases_empty_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty"):
        find_mmwhs_cases(tmp_path)


@pytest.mark.parametrize(
    "removed, named, match",
    [
        ("ct_train_1002_label.nii.gz", "ct_train_1002_image.nii.gz", "has no label"),
        ("ct_train_1002_image.nii.gz", "ct_train_1002_label.nii.gz", "has no image"),
    ],
)
def test_find_mmwhs_cases_unpaired_file(tmp_path, removed, named, match):
    root = _make_dataset(tmp_path)
    (root / removed).unlink()
    with pytest.raises(FileNotFoundError, match=match) as err:
        find_mmwhs_cases(root)
    assert named in str(err.value)


def test_find_mmwhs_cases_shape_mismatch(tmp_path):
    root = _make_dataset(tmp_path)
    _write(root / "ct_train_1002_label.nii.gz", shape=(4, 5, 2))
    with pytest.raises(ValueError, match="shape mismatch") as err:
        find_mmwhs_cases(root)
    message = str(err.value)
    for text in ("ct_train_1002_image.nii.gz", "ct_train_1002_label.nii.gz", "(4, 5, 3)", "(4, 5, 2)"):
        assert text in message


def _write_datalist(path: Path, items: list[dict]) -> Path:
    path.write_text(json.dumps({"name": "test", "training": items}))
    return path


def test_load_datalist_relative_paths(tmp_path):
    _make_dataset(tmp_path / "data", ids=(1001, 1002))
    items = [
        {"image": f"data/ct_train_{i}_image.nii.gz", "label": f"data/ct_train_{i}_label.nii.gz"} for i in (1002, 1001)
    ]
    datalist = _write_datalist(tmp_path / "datalist.json", items)
    cases = load_datalist(datalist)
    assert [c["image"] for c in cases] == [str(tmp_path / "data" / f"ct_train_{i}_image.nii.gz") for i in (1002, 1001)]
    assert mmwhs_cases(datalist) == cases


def test_load_datalist_missing_file(tmp_path):
    _make_dataset(tmp_path / "data", ids=(1001,))
    items = [{"image": "data/ct_train_1001_image.nii.gz", "label": "data/ct_train_1009_label.nii.gz"}]
    datalist = _write_datalist(tmp_path / "datalist.json", items)
    with pytest.raises(FileNotFoundError) as err:
        load_datalist(datalist)
    assert "datalist.json" in str(err.value) and "ct_train_1009_label.nii.gz" in str(err.value)


def test_load_datalist_shape_mismatch(tmp_path):
    _write(tmp_path / "a.nii.gz", (4, 4, 4))
    _write(tmp_path / "b.nii.gz", (4, 4, 5))
    datalist = _write_datalist(tmp_path / "datalist.json", [{"image": "a.nii.gz", "label": "b.nii.gz"}])
    with pytest.raises(ValueError, match="b.nii.gz: image/label shape mismatch.*a.nii.gz"):
        load_datalist(datalist)


def test_load_datalist_missing_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_datalist(tmp_path / "missing.json")


def test_fold_datalists(tmp_path):
    root = _make_dataset(tmp_path, ids=range(1001, 1008))
    split = fold_datalists(str(root), fold=1)
    assert [Path(c["image"]).name for c in split["validation"]] == [
        "ct_train_1003_image.nii.gz",
        "ct_train_1004_image.nii.gz",
    ]
    everything = sorted(c["image"] for c in split["training"] + split["validation"])
    assert len(split["training"]) == 5 and everything == [c["image"] for c in mmwhs_cases(root)]


def test_a_4d_image_names_its_channels(tmp_path):
    root = _make_dataset(tmp_path)
    _write(root / "ct_train_1002_image.nii.gz", shape=(4, 5, 3, 2))
    with pytest.raises(DataError, match=r"ct_train_1002_image.nii.gz: this volume has 2 channels; MM-WHS CT has 1"):
        find_mmwhs_cases(root)
