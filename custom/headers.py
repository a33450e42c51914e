"""What every dataset layout's reader checks of its cases from the file headers alone, before any voxel is read: the
files exist and are listed once, each image has the dataset's channels, and each label lies on its image's grid.

Problems go through :func:`custom.errors.report_problem`: training raises at the first, the dataset check
(``dsd-check-data``) collects them all.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import nibabel as nib

from custom.errors import CHANNELS, DUPLICATE, MISSING, ORIENTATION, SHAPE, SPACING, UNREADABLE, report_problem

__all__ = ["SPACING_TOLERANCE", "check_cases", "read_header"]

#: Largest relative difference between an image's and its label's voxel spacing that is taken as the same grid.
SPACING_TOLERANCE = 1e-3


def read_header(path: str | os.PathLike):
    """The NIfTI (or other nibabel) image of ``path`` with its header read and its voxels left on disk.

    Returns:
        the nibabel image, or ``None`` after reporting an unreadable file (while problems are collected).
    """
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises several types for unreadable files
        report_problem(path, UNREADABLE, f"cannot read the image header: {error}")
        return None


def _channel_fault(shape: tuple[int, ...], num_channels: int | None, dataset: str) -> str | None:
    if len(shape) not in (3, 4):
        return f"this volume has shape {shape}: {len(shape)} dimensions; {dataset} images are 3-D, channels last"
    channels = shape[3] if len(shape) == 4 else 1
    if num_channels is None or channels == num_channels:
        return None
    expected = (
        "a 3-D (X, Y, Z) volume"
        if num_channels == 1
        else f"an (X, Y, Z, {num_channels}) volume, the channels last as MSD distributes them"
    )
    plural = "s" if channels != 1 else ""
    return f"this volume has {channels} channel{plural}; {dataset} has {num_channels} (shape {shape}; expected {expected})"


def _check_label_grid(image_path: str, image, label_path: str, label) -> None:
    spatial, label_shape = tuple(image.shape[:3]), tuple(label.shape)
    if label_shape != spatial:
        report_problem(
            label_path,
            SHAPE,
            f"image/label shape mismatch: the label has shape {label_shape} but its image {image_path} has shape "
            f"{tuple(image.shape)}; the label must be a 3-D map on the image's grid",
        )
        return
    image_spacing, label_spacing = image.header.get_zooms()[:3], label.header.get_zooms()[:3]
    if not all(math.isclose(a, b, rel_tol=SPACING_TOLERANCE) for a, b in zip(image_spacing, label_spacing)):
        report_problem(
            label_path,
            SPACING,
            f"voxel spacing {_mm(label_spacing)} but its image {image_path} has {_mm(image_spacing)}",
        )
    image_axes, label_axes = nib.aff2axcodes(image.affine), nib.aff2axcodes(label.affine)
    if image_axes != label_axes:
        report_problem(
            label_path,
            ORIENTATION,
            f"orientation {''.join(label_axes)} but its image {image_path} has {''.join(image_axes)}",
        )


def _mm(spacing: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(s):g}" for s in spacing) + ") mm"


def _files(value) -> list[str]:
    # An MSD-style datalist may give a list of files for one entry (one file per channel).
    return [value] if isinstance(value, str) else list(value)


def check_cases(
    cases: Sequence[dict], num_channels: int | None, dataset: str, listing: str | os.PathLike
) -> list[dict]:
    """Check every case's files from their headers.

    Args:
        cases: ``{"image": path, "label": path}`` (``label`` optional), absolute paths.
        num_channels: the images' expected number of channels; ``None`` skips the check.
        dataset: the dataset's name in messages, e.g. ``"MM-WHS CT"``.
        listing: the file or folder the cases were listed from, named in messages.

    Returns:
        the cases whose files exist and whose headers can be read, in order, each listed once.

    Raises:
        MissingDataError: a listed file does not exist (unless problems are collected).
        DataError: an image listed twice, a header that cannot be read, an image with the wrong number of
            channels, or a label off its image's grid (unless problems are collected).
    """
    usable, seen = [], set()
    for case in cases:
        image_key = str(case["image"])
        if image_key in seen:
            report_problem(case["image"], DUPLICATE, f"listed twice in {listing}")
            continue
        seen.add(image_key)
        files = {field: _files(case[field]) for field in ("image", "label") if field in case}
        missing = [(field, f) for field, names in files.items() for f in names if not os.path.isfile(f)]
        for field, file in missing:
            report_problem(file, MISSING, f"listed in {listing} as the {field} of a case, but it does not exist")
        if missing:
            continue
        if len(files["image"]) > 1 or len(files.get("label", [])) > 1:
            usable.append(case)  # one file per channel: MONAI stacks them; their grids are MONAI's to check
            continue
        image = read_header(case["image"])
        label = read_header(case["label"]) if "label" in case else None
        if image is None or ("label" in case and label is None):
            continue
        fault = _channel_fault(tuple(image.shape), num_channels, dataset)
        if fault:
            report_problem(case["image"], CHANNELS, fault)
        elif label is not None:
            _check_label_grid(str(case["image"]), image, str(case["label"]), label)
        usable.append(case)
    return usable

