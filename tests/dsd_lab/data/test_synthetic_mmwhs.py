from __future__ import annotations

import itertools
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.definitions import MMWHS_BACKGROUND_CODES, MMWHS_LABEL_CODES
from custom.mmwhs import find_mmwhs_cases
from dsd_lab.data.synthetic_mmwhs import make_mmwhs
from tests.helpers import ROOT, run_console

_NUM_CASES = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mmwhs")
    paths = make_mmwhs(out, cases=_NUM_CASES, seed=0)
    return out, paths


def _load(path):
    img = nib.load(path)
    return img, np.asarray(img.dataobj)


def test_files_and_names(dataset):
    out, paths = dataset
    expected = [f"ct_train_{1001 + i}_{kind}.nii.gz" for i in range(_NUM_CASES) for kind in ("image", "label")]
    assert [Path(p).name for p in paths] == expected
    assert sorted(os.listdir(out)) == sorted(expected)
    assert len(find_mmwhs_cases(out)) == _NUM_CASES
    assert all(os.path.getsize(p) < 1_000_000 for p in paths)


def test_dtypes_and_intensities(dataset):
    for case in find_mmwhs_cases(dataset[0]):
        image_img, image = _load(case["image"])
        label_img, label = _load(case["label"])
        assert image_img.get_data_dtype() == np.int16 and image.dtype == np.int16
        assert label_img.get_data_dtype() in (np.int16, np.uint16)
        assert image.min() < -900  # air around the body
        medians = {code: np.median(image[label == code]) for code in MMWHS_LABEL_CODES}
        assert 60 < medians[205] < 160  # myocardium: enhanced muscle, darker than blood
        assert all(120 < medians[code] < 500 for code in (420, 500, 550, 600, 820, 850))
        # Every pair of classes is separable by intensity alone, so a small network can learn it.
        assert min(abs(a - b) for a, b in itertools.combinations(medians.values(), 2)) > 10


def test_label_codes(dataset):
    allowed = set(MMWHS_LABEL_CODES) | set(MMWHS_BACKGROUND_CODES)
    stray = []
    for case in find_mmwhs_cases(dataset[0]):
        codes = set(np.unique(_load(case["label"])[1]).tolist())
        assert codes <= allowed
        assert set(MMWHS_LABEL_CODES) | {0} <= codes
        stray.append(421 in codes)
    assert any(stray) and not all(stray)


def test_geometry(dataset):
    shapes = []
    for case in find_mmwhs_cases(dataset[0]):
        image, label = nib.load(case["image"]), nib.load(case["label"])
        np.testing.assert_allclose(image.affine, label.affine)
        assert nib.aff2axcodes(image.affine) != ("R", "A", "S")
        assert image.header.get_qform(coded=True)[1] > 0 and image.header.get_sform(coded=True)[1] > 0
        zooms = image.header.get_zooms()
        assert 0.9 <= zooms[0] <= 1.2 and 0.9 <= zooms[1] <= 1.2 and 1.6 <= zooms[2] <= 2.5
        assert all(n % 16 for n in image.shape)
        resampled = np.array(image.shape) * np.array(zooms) / np.array([1.5, 1.5, 2.0])
        assert np.all((resampled > 44) & (resampled < 76))
        shapes.append(image.shape)
    assert len(set(shapes)) > 1


def test_deterministic_per_seed(dataset, tmp_path):
    first = make_mmwhs(tmp_path / "same", cases=1, seed=0)
    other = make_mmwhs(tmp_path / "other", cases=1, seed=1)
    for i, path in enumerate(first):
        reference, again = nib.load(dataset[1][i]), nib.load(path)
        np.testing.assert_array_equal(np.asarray(reference.dataobj), np.asarray(again.dataobj))
        np.testing.assert_array_equal(reference.affine, again.affine)
    assert not np.array_equal(nib.load(other[0]).affine, nib.load(first[0]).affine)


def test_fixed_shape(tmp_path):
    paths = make_mmwhs(tmp_path, cases=1, shape=(40, 42, 30))
    assert nib.load(paths[0]).shape == nib.load(paths[1]).shape == (40, 42, 30)


@pytest.mark.parametrize("kwargs", [{"cases": 0}, {"seed": -1}, {"shape": (10, 10)}])
def test_invalid_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_mmwhs(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_refuses_overwrite(tmp_path):
    existing = tmp_path / "ct_train_1002_label.nii.gz"
    existing.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="ct_train_1002_label.nii.gz"):
        make_mmwhs(tmp_path, cases=2)
    assert os.listdir(tmp_path) == [existing.name] and existing.read_bytes() == b"precious"


def test_cli(tmp_path):
    out = tmp_path / "cli"
    result = run_console("dsd-synthetic", "mmwhs", str(out), "--cases", "2", cwd=ROOT)
    assert len(result.stdout.strip().splitlines()) == 1 and str(out) in result.stdout
    assert [Path(c["image"]).name for c in find_mmwhs_cases(out)] == [
        "ct_train_1001_image.nii.gz",
        "ct_train_1002_image.nii.gz",
    ]
