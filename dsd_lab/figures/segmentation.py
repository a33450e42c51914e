"""The paper's Fig. 2 layout: one axial slice of a scan, its ground truth and each model's prediction side by side."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from custom.definitions import DISPLAY_NAMES
from dsd_lab.figures.canvas import PALETTE, matplotlib_figure, save_png

__all__ = ["dataset_label_names", "segmentation_figure"]

_OVERLAY_ALPHA = 0.5
_PANEL_INCHES = 3.0


def dataset_label_names(dataset: str) -> dict[int, str]:
    """Display names of the foreground label codes, as stored in a dataset's label and prediction files.

    Args:
        dataset: ``"mmwhs"`` (codes 205, 420, ..., 850) or ``"brats"`` (MSD Task01 codes 1, 2, 3).

    Returns:
        ``{code: name}``, e.g. ``{205: "LV myocardium", ...}``.

    Raises:
        ValueError: an unknown dataset.
    """
    key = str(dataset).lower()
    if key not in DISPLAY_NAMES:
        raise ValueError(f"Unknown dataset '{dataset}'; choose one of {sorted(DISPLAY_NAMES)}.")
    return dict(DISPLAY_NAMES[key])


def _load(path: str | os.PathLike, role: str) -> nib.spatialimages.SpatialImage:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{role} file not found: {path}")
    try:
        return nib.load(path)
    except Exception as error:  # nibabel raises several types for unreadable files
        raise ValueError(f"Cannot read the {role} file {path}: {error}") from error


def _canonical(img: nib.spatialimages.SpatialImage, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``data`` (spatial axes first) to the closest RAS orientation; return it and its voxel spacing."""
    ornt = nib.orientations.io_orientation(img.affine)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    return nib.orientations.apply_orientation(data, ornt), spacing


def _axial_view(volume: np.ndarray, index: int) -> np.ndarray:
    """Axial slice ``index`` of a RAS volume as a displayed 2-D array: anterior up, patient's right on the left."""
    return volume[::-1, ::-1, index].T


def _label_header(
    path: str | os.PathLike, role: str, grid: tuple[int, ...], image_path: Path
) -> nib.spatialimages.SpatialImage:
    """Load a label map's header and check that it lies on the image's grid (trailing axes of size 1 allowed)."""
    img = _load(path, role)
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:  # (X, Y, Z, 1) label files
        shape = shape[:-1]
    if shape != grid:
        raise ValueError(
            f"{role} {Path(path)} has shape {tuple(img.shape)} but the image {image_path} has the grid {grid}: "
            "labels and predictions must be on the image's original grid."
        )
    return img


def _label_volume(
    img: nib.spatialimages.SpatialImage, path: str | os.PathLike, role: str, codes: Sequence[int]
) -> np.ndarray:
    """Read a label map, check that it holds some named code if it holds any foreground, reorient it to RAS."""
    data = np.asanyarray(img.dataobj).reshape(img.shape[:3])
    if not np.isin(data, codes).any() and data.any():
        found = np.unique(data[data != 0])[:10].tolist()
        raise ValueError(
            f"{role} {Path(path)} holds the label codes {found} but none of the named codes {list(codes)}: "
            "are the label names those of this dataset (MM-WHS 205..850 or BraTS 1..3), and does the file hold "
            "label codes rather than class indices?"
        )
    return _canonical(img, data)[0]


def _check_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    if window is None:
        return None
    if len(window) != 2 or not float(window[0]) < float(window[1]):
        raise ValueError(f"window must be (low, high) with low < high, got {window!r}.")
    return float(window[0]), float(window[1])


def segmentation_figure(
    image: str | os.PathLike,
    label: str | os.PathLike,
    predictions: Mapping[str, str | os.PathLike],
    out_png: str | os.PathLike,
    label_names: Mapping[int, str],
    slice_index: int | None = None,
    channel: int = 0,
    window: Sequence[float] | None = None,
) -> tuple[Path, int]:
    """Draw one axial slice of a scan, its ground truth and each model's prediction side by side (paper Fig. 2).

    Every volume is reoriented by its own affine to the closest RAS orientation, so axial is the last axis,
    and shown with anterior up and the patient's right on the left (radiological convention). Label classes
    are overlaid semi-transparently on the image, each in one fixed colour in every panel (colours by rank of
    the code; 9 distinct colours, then they repeat), with one legend naming them. Voxels whose code is not in
    ``label_names`` (background, MM-WHS' stray 421) are not coloured.

    Args:
        image: the scan (NIfTI). 3-D, or 4-D with the channels last as MSD stores them (``X, Y, Z, C``).
        label: the ground-truth label map on the image's grid, with the dataset's codes.
        predictions: model name -> predicted label map on the image's grid (as the bundles' evaluation writes
            to ``<output_dir>/predictions/<case>_seg.nii.gz``), one panel each, in this order.
        out_png: the PNG to write; parent folders are created, an existing file is replaced.
        label_names: label code as stored in the files -> display name, e.g. :func:`dataset_label_names`.
            Code 0 (background) is never drawn.
        slice_index: the axial slice in the RAS-reoriented volume (0 = most inferior); ``None`` picks the
            slice with the most ground-truth foreground (the middle slice if the label is empty).
        channel: the image channel shown for 4-D images (for BraTS 0 = FLAIR, 1 = T1w, 2 = t1gd, 3 = T2w).
        window: ``(low, high)`` display window in image units, e.g. ``(-175, 250)`` HU for CT;
            default the 1st to 99th percentile of the shown slice.

    Returns:
        ``(path of the written PNG, the axial slice index shown)``.

    Raises:
        FileNotFoundError: the image, label or a prediction file does not exist.
        ValueError: no prediction; an unreadable file; a label or prediction not on the image's grid; a file
            holding codes of which none is named; a bad channel, slice index, window or ``label_names``.
        ImportError: matplotlib is not installed.
    """
    Figure, FigureCanvasAgg = matplotlib_figure()
    if not isinstance(predictions, Mapping) or len(predictions) < 1:
        raise ValueError(
            "predictions must map at least one model name to a prediction file, e.g. "
            f"{{'Basic': 'a_seg.nii.gz', 'DSD': 'b_seg.nii.gz'}}; got {predictions!r}."
        )
    names = {int(code): str(name) for code, name in label_names.items() if int(code) != 0}
    if not names:
        raise ValueError(f"label_names must name at least one non-zero label code, got {dict(label_names)!r}.")
    codes = sorted(names)
    window = _check_window(window)

    # Check every file's presence and grid from the headers before reading any voxel data.
    image_path = Path(image).expanduser()
    image_img = _load(image_path, "Image")
    if len(image_img.shape) not in (3, 4):
        raise ValueError(f"Image {image_path} has shape {image_img.shape}: expected 3-D, or 4-D with channels last.")
    num_channels = image_img.shape[3] if len(image_img.shape) == 4 else 1
    if not 0 <= int(channel) < num_channels:
        raise ValueError(f"channel {channel} is out of range: image {image_path} has {num_channels} channel(s).")
    grid = tuple(image_img.shape[:3])
    maps = [("Ground truth", label, "Label")]
    maps += [(name, path, f"Prediction '{name}'") for name, path in predictions.items()]
    headers = [_label_header(path, role, grid, image_path) for _, path, role in maps]

    dataobj = image_img.dataobj[..., int(channel)] if len(image_img.shape) == 4 else image_img.dataobj
    volume, spacing = _canonical(image_img, np.asanyarray(dataobj))
    panels: list[tuple[str, np.ndarray | None]] = []
    for (title, path, role), header in zip(maps, headers):
        labels = _label_volume(header, path, role, codes)
        if labels.shape != volume.shape:  # same grid shape, but the affine permutes the axes otherwise
            raise ValueError(f"{role} {Path(path)} is oriented differently from the image {image_path}.")
        panels.append((title, labels))
    gt = panels[0][1]

    depth = volume.shape[2]
    if slice_index is None:
        counts = np.isin(gt, codes).sum(axis=(0, 1))
        slice_index = int(np.argmax(counts)) if counts.any() else depth // 2
    elif not 0 <= int(slice_index) < depth:
        raise ValueError(f"slice_index {slice_index} is out of range: the image has {depth} axial slices.")
    slice_index = int(slice_index)

    shown = _axial_view(volume, slice_index).astype(np.float32)
    low, high = window if window is not None else np.percentile(shown, (1, 99))
    if high <= low:
        high = low + 1.0
    colours = {code: PALETTE[rank % len(PALETTE)] for rank, code in enumerate(codes)}
    panels.insert(0, (f"Image (axial slice {slice_index})", None))

    height, width = shown.shape
    aspect = float(spacing[1] / spacing[0])  # pixel height / width: rows run along A, columns along R
    panel_h = float(np.clip(_PANEL_INCHES * height * aspect / width, 1.5, 2 * _PANEL_INCHES))
    fig = Figure(figsize=(_PANEL_INCHES * len(panels), panel_h + 0.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, labels) in zip(axes, panels):
        ax.imshow(shown, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        if labels is not None:
            ax.imshow(_overlay(_axial_view(labels, slice_index), colours), aspect=aspect, interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.set_axis_off()
    for x, text in ((0.02, "R"), (0.98, "L")):  # the patient's sides
        axes[0].text(x, 0.5, text, transform=axes[0].transAxes, color="yellow", fontsize=9, ha="center", va="center")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colours[c], edgecolor="none", label=names[c]) for c in codes]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False, fontsize=10)
    return save_png(fig, FigureCanvasAgg, out_png), slice_index


def _overlay(labels: np.ndarray, colours: Mapping[int, str]) -> np.ndarray:
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*labels.shape, 4), np.float32)
    for code, colour in colours.items():
        rgba[labels == code] = to_rgba(colour, _OVERLAY_ALPHA)
    return rgba
