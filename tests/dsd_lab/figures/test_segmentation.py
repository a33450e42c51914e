"""The segmentation comparison PNG (paper Fig. 2) and its command line."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from dsd_lab.figures import cli, segmentation  # noqa: E402
from dsd_lab.figures.curves import training_curves  # noqa: E402
from dsd_lab.figures.segmentation import dataset_label_names, segmentation_figure  # noqa: E402

MMWHS = dataset_label_names("mmwhs")
SHAPE = (20, 16, 10)  # voxel grid of the synthetic cases
BUSIEST = 7  # the stored slice (last voxel axis) with the most foreground
PANEL_PX = 450  # 3 inches at 150 dpi


def _affine(axcodes: tuple[str, str, str], spacing=(1.0, 1.0, 2.0)) -> np.ndarray:
    ornt = nib.orientations.axcodes2ornt(axcodes)
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (world_axis, flip) in enumerate(ornt):
        affine[int(world_axis), axis] = flip * spacing[axis]
    return affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


def _label(shape=SHAPE, codes=(205, 500)) -> np.ndarray:
    """Two classes; slice BUSIEST holds the most foreground, its neighbours less."""
    label = np.zeros(shape, np.int16)
    label[4:10, 3:9, BUSIEST - 2 : BUSIEST + 3] = codes[0]
    label[10:16, 6:12, BUSIEST - 1 : BUSIEST + 2] = codes[1]
    label[2:18, 2:14, BUSIEST] = codes[1]
    return label


def _case(folder: Path, axcodes=("L", "P", "S"), channels: int = 0, codes=(205, 500), models: int = 2) -> dict:
    """Write an image (3-D, or 4-D channels-last), its label and ``models`` predictions; return the paths."""
    affine = _affine(axcodes)
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 100.0, SHAPE + ((channels,) if channels else ())).astype(np.float32)
    label = _label(codes=codes)
    predictions = {}
    for m in range(models):
        pred = np.roll(label, m, axis=0)  # each model a little off
        predictions[f"model {m}"] = _save(folder / f"pred{m}_seg.nii.gz", pred, affine)
    return {
        "image": _save(folder / "image.nii.gz", image, affine),
        "label": _save(folder / "label.nii.gz", label, affine),
        "predictions": predictions,
    }


@pytest.mark.parametrize(
    "channels, models, dataset",
    [(0, 2, "mmwhs"), (0, 3, "mmwhs"), (4, 2, "brats")],
    ids=["ct-2-models", "ct-3-models", "brats-4d"],
)
def test_segmentation_figure_writes_a_png_with_one_panel_per_volume(tmp_path, channels, models, dataset):
    names = dataset_label_names(dataset)
    case = _case(tmp_path, channels=channels, codes=sorted(names)[:2], models=models)
    out = tmp_path / "new" / "folder" / "fig.png"

    path, index = segmentation_figure(**case, out_png=out, label_names=names, channel=channels - 1 if channels else 0)

    assert path == out and out.is_file()
    pixels = imread(out)  # raises on anything but a valid PNG
    height, width = pixels.shape[:2]
    assert width == PANEL_PX * (2 + models) and 300 < height < 2 * PANEL_PX
    assert pixels.std() > 0.05  # drawn, not blank
    assert index == BUSIEST


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "I"), ("P", "L", "S")], ids="".join)
def test_default_slice_is_the_one_with_most_ground_truth_foreground(tmp_path, axcodes):
    case = _case(tmp_path, axcodes=axcodes)
    _, index = segmentation_figure(**case, out_png=tmp_path / "fig.png", label_names=MMWHS)
    # Indices count from inferior to superior: a volume stored I-wards has its busiest slice mirrored.
    assert index == (SHAPE[2] - 1 - BUSIEST if axcodes[2] == "I" else BUSIEST)


def test_explicit_slice_index_is_shown_and_checked(tmp_path):
    case = _case(tmp_path)
    assert segmentation_figure(**case, out_png=tmp_path / "a.png", label_names=MMWHS, slice_index=2)[1] == 2
    with pytest.raises(ValueError, match="slice_index 10 is out of range"):
        segmentation_figure(**case, out_png=tmp_path / "b.png", label_names=MMWHS, slice_index=SHAPE[2])


def test_figure_does_not_depend_on_the_voxel_order_on_disk(tmp_path):
    # The same anatomy stored RAS and LPI (every voxel axis reversed) must give the same picture.
    pngs = []
    for axcodes, flip in ((("R", "A", "S"), slice(None)), (("L", "P", "I"), slice(None, None, -1))):
        folder = tmp_path / "".join(axcodes)
        folder.mkdir()
        case = _case(folder, axcodes=("R", "A", "S"))
        for path in [case["image"], case["label"], *case["predictions"].values()]:
            data = np.asarray(nib.load(path).dataobj)
            _save(Path(path), np.ascontiguousarray(data[flip, flip, flip]), _affine(axcodes))
        pngs.append(imread(segmentation_figure(**case, out_png=folder / "fig.png", label_names=MMWHS)[0]))
    np.testing.assert_array_equal(pngs[0], pngs[1])


def test_axial_view_puts_anterior_up_and_the_patients_right_on_the_left():
    volume = np.zeros((5, 4, 3))  # RAS: x grows to the patient's right, y anteriorly
    volume[4, 3, 1] = 1.0  # right anterior corner of slice 1
    view = segmentation._axial_view(volume, 1)
    assert view.shape == (4, 5) and view[0, 0] == 1.0


def _break_prediction(case, tmp_path):
    bad = tmp_path / "bad_seg.nii.gz"
    _save(bad, np.zeros((SHAPE[0], SHAPE[1], SHAPE[2] + 1), np.int16), _affine(("L", "P", "S")))
    return {**case, "predictions": {**case["predictions"], "broken": str(bad)}}, bad


def _class_indices_as_label(case, tmp_path):
    bad = tmp_path / "indices.nii.gz"
    _save(bad, (np.asarray(nib.load(case["label"]).dataobj) > 0).astype(np.int16), _affine(("L", "P", "S")))
    return {**case, "label": str(bad)}, bad


@pytest.mark.parametrize(
    "corrupt, error",
    [
        (_break_prediction, ValueError),
        (lambda c, t: ({**c, "label": str(t / "nowhere.nii.gz")}, t / "nowhere.nii.gz"), FileNotFoundError),
        (lambda c, t: ({**c, "image": str(t / "gone.nii.gz")}, t / "gone.nii.gz"), FileNotFoundError),
        (lambda c, t: ({**c, "predictions": {"x": str(t / "p.nii.gz")}}, t / "p.nii.gz"), FileNotFoundError),
        (_class_indices_as_label, ValueError),
    ],
    ids=["prediction-grid", "missing-label", "missing-image", "missing-prediction", "codes-not-named"],
)
def test_bad_input_fails_naming_the_file(tmp_path, corrupt, error):
    case, culprit = corrupt(_case(tmp_path), tmp_path)
    out = tmp_path / "fig.png"
    with pytest.raises(error, match=str(culprit)):
        segmentation_figure(**case, out_png=out, label_names=MMWHS)
    assert not out.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"predictions": {}}, "at least one"),
        ({"channel": 1}, "channel 1 is out of range"),
        ({"window": (5, 1)}, "low < high"),
    ],
    ids=["no-prediction", "channel", "window"],
)
def test_bad_arguments_fail_clearly(tmp_path, change, message):
    case = {**_case(tmp_path), "out_png": tmp_path / "fig.png", "label_names": MMWHS, **change}
    with pytest.raises(ValueError, match=message):
        segmentation_figure(**case)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import matplotlib...` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "monai-dsd\[figures\]"'):
        training_curves(tmp_path, tmp_path / "c.png")


def test_dataset_label_names():
    assert dataset_label_names("brats") == {1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"}
    assert MMWHS[205] == "LV myocardium" and len(MMWHS) == 7
    assert dataset_label_names("hippocampus") == {1: "anterior", 2: "posterior"}
    with pytest.raises(ValueError, match="Unknown dataset"):
        dataset_label_names("acdc")


def test_segmentation_command_line(tmp_path, capsys):
    case = _case(tmp_path)
    predictions = repr({"Basic": case["predictions"]["model 0"], "DSD": case["predictions"]["model 1"]})
    out = tmp_path / "fig.png"
    cli.main(
        ["segmentation", "--image", case["image"], "--label", case["label"], "--predictions", predictions,
         "--out", str(out), "--dataset", "mmwhs", "--window", "[-175,250]"]
    )  # fmt: skip
    assert f"Wrote {out} (axial slice {BUSIEST})" in capsys.readouterr().out
    assert imread(out).shape[1] == PANEL_PX * 4
