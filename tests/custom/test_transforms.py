from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from custom.definitions import MMWHS_LABEL_CODES
from custom.errors import DataError
from custom.transforms import CheckFinited, LoadImageNamed, LoadImageNamedd, MapLabelCodesd, mmwhs_label_transform

_CODES = [0, 205, 420, 500, 550, 600, 820, 850, 421]
_EXPECTED = [0, 1, 2, 3, 4, 5, 6, 7, 0]
_FILE = "/data/ct_train_1001_label.nii.gz"


def _label(values, kind):
    arr = np.asarray(values).reshape(1, 3, 3)
    if kind == "numpy_int16":
        return arr.astype(np.int16)
    if kind == "numpy_uint16":
        return arr.astype(np.uint16)
    if kind == "torch_int16":
        return torch.as_tensor(arr.astype(np.int16))
    return MetaTensor(torch.as_tensor(arr, dtype=torch.float32), meta={"filename_or_obj": _FILE})


@pytest.mark.parametrize("kind", ["numpy_int16", "numpy_uint16", "torch_int16", "meta_float32"])
def test_maps_every_mmwhs_code(kind):
    label = _label(_CODES, kind)
    out = mmwhs_label_transform()({"label": label, "image": label})
    assert type(out["label"]) is type(label)
    np.testing.assert_array_equal(np.asarray(out["label"]).ravel(), _EXPECTED)
    assert out["image"] is label  # other keys untouched


def test_keeps_metatensor_meta():
    affine = torch.diag(torch.tensor([-1.0, -1.0, 2.0, 1.0]))
    label = MetaTensor(torch.full((1, 2, 2, 2), 500.0), affine=affine, meta={"filename_or_obj": _FILE})
    out = mmwhs_label_transform()({"label": label})["label"]
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == _FILE
    torch.testing.assert_close(out.affine, affine.to(out.affine.dtype))
    assert torch.all(out == 3)


def test_float_labels_with_rounding_noise():
    values = np.array(_CODES, np.float32) + np.float32(2e-4)
    out = mmwhs_label_transform()({"label": values.reshape(1, 9)})["label"]
    np.testing.assert_array_equal(out.ravel(), _EXPECTED)


@pytest.mark.parametrize("kind, source", [("meta_float32", "ct_train_1001_label.nii.gz"), ("numpy_int16", "label")])
def test_unknown_code_names_file_and_code(kind, source):
    label = _label([0, 205, 123, 500, 0, 0, 123, 0, 0], kind)
    with pytest.raises(DataError, match=r"unknown label code\(s\) 123 \(2 voxels\)") as err:
        mmwhs_label_transform()({"label": label})
    assert source in str(err.value)


def test_non_integral_value_is_unknown():
    with pytest.raises(ValueError, match="205.5"):
        MapLabelCodesd("label", codes={205: 1})({"label": np.array([[0.0, 205.5]])})


def test_custom_codes_and_missing_keys():
    transform = MapLabelCodesd("seg", codes={1: 2, 2: 1}, background_codes=(0, 9), allow_missing_keys=True)
    out = transform({"seg": np.array([[0, 1, 2, 9]])})
    np.testing.assert_array_equal(out["seg"], [[0, 2, 1, 0]])
    assert transform({"other": 1}) == {"other": 1}


def test_rejects_overlapping_codes():
    with pytest.raises(ValueError, match="421"):
        MapLabelCodesd("label", codes={421: 1}, background_codes=(0, 421))


def test_maps_label_loaded_from_file(tmp_path):
    path = tmp_path / "ct_train_1001_label.nii.gz"
    labels = np.array(list(MMWHS_LABEL_CODES) + [421, 0], np.uint16).reshape(3, 3, 1)
    nib.save(nib.Nifti1Image(labels, np.diag([-1.0, -1.0, 2.0, 1.0])), path)
    data = LoadImaged("label", ensure_channel_first=True)({"label": str(path)})
    out = mmwhs_label_transform()(data)["label"]
    assert sorted(torch.unique(out).tolist()) == list(range(8))
    assert out.meta["filename_or_obj"] == str(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_raises(bad):
    image = MetaTensor(torch.tensor([[0.0, bad, 1.0]]), meta={"filename_or_obj": "/data/ct_train_1001_image.nii.gz"})
    with pytest.raises(ValueError, match="ct_train_1001_image.nii.gz"):
        CheckFinited("image")({"image": image})


@pytest.mark.parametrize("image", [np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int16), torch.ones(2, 2)])
def test_check_finite_passes(image):
    assert CheckFinited("image")({"image": image})["image"] is image


def _truncated(path):
    nib.save(nib.Nifti1Image(np.arange(4096, dtype=np.float32).reshape(16, 16, 16), np.eye(4)), path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _not_nifti(path):
    path.write_bytes(b"<html>404 Not Found</html>")


@pytest.mark.parametrize(
    "spoil, reason",
    [(_truncated, "the file is truncated or its compressed data is corrupt"), (_not_nifti, "ImageFileError")],
)
def test_a_file_that_cannot_be_read_is_named_with_the_reason(tmp_path, spoil, reason):
    path = tmp_path / "ct_train_1001_image.nii.gz"
    spoil(path)
    for load in (lambda: LoadImageNamedd("image", ensure_channel_first=True)({"image": str(path)}),
                 lambda: LoadImageNamed(image_only=True)(str(path))):  # fmt: skip
        with pytest.raises(DataError, match=f"^{path}: cannot read the image: .*{reason}") as raised:
            load()
        assert raised.value.problem.fault == "unreadable"


def test_the_named_loader_loads_as_monai_does(tmp_path):
    path = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([2.0, 1.0, 1.0, 1.0])), path)
    ours = LoadImageNamedd("image", ensure_channel_first=True)({"image": str(path)})["image"]
    monai = LoadImaged("image", ensure_channel_first=True)({"image": str(path)})["image"]
    torch.testing.assert_close(ours.as_tensor(), monai.as_tensor())
    torch.testing.assert_close(ours.affine, monai.affine)
    with pytest.raises(ValueError, match="image_only"):
        LoadImageNamedd("image", image_only=False)
