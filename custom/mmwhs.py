"""The MM-WHS 2017 dataset as distributed: finding its cases, datalist files, and the k-fold split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
from monai.data import load_decathlon_datalist

from custom.files import natural_key

__all__ = [
    "find_mmwhs_cases",
    "load_datalist",
    "mmwhs_cases",
    "kfold_split",
    "fold_datalists",
    "find_mmwhs_unlabelled",
]

_IMAGE_SUFFIX = "_image.nii.gz"
_LABEL_SUFFIX = "_label.nii.gz"
#: The folder of the unlabelled CT scans in the MM-WHS 2017 release, beside the training folder ``ct_train``.
UNLABELLED_FOLDER = "ct_test"
_UNLABELLED_PATTERN = "ct_test_*" + _IMAGE_SUFFIX


def _check_same_shape(image: str, label: str) -> None:
    # Header-only read: nib.load is lazy, so no voxel data is decompressed here.
    image_shape, label_shape = nib.load(image).shape, nib.load(label).shape
    if tuple(image_shape) != tuple(label_shape):
        raise ValueError(
            f"Image/label shape mismatch: {image} has shape {tuple(image_shape)} "
            f"but {label} has shape {tuple(label_shape)}."
        )


def find_mmwhs_cases(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Find the image/label pairs of an MM-WHS 2017 style folder.

    The folder holds ``<prefix>_image.nii.gz`` and ``<prefix>_label.nii.gz`` pairs side by side,
    e.g. ``ct_train_1001_image.nii.gz`` and ``ct_train_1001_label.nii.gz``. Files starting with
    ``._`` (macOS resource forks) are ignored.

    Args:
        dataset_dir: folder holding the image and label files.

    Returns:
        ``[{"image": path, "label": path}, ...]`` with absolute paths, sorted by case id.

    Raises:
        FileNotFoundError: if ``dataset_dir`` does not exist, or an image has no label or a label
            has no image.
        NotADirectoryError: if ``dataset_dir`` is not a directory.
        ValueError: if the folder holds no ``*_image.nii.gz`` file, or an image and its label
            differ in shape.
    """
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"MM-WHS dataset directory does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"MM-WHS dataset path is not a directory: {root}")
    root = root.resolve()

    names = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("._")]
    images = {n[: -len(_IMAGE_SUFFIX)]: n for n in names if n.endswith(_IMAGE_SUFFIX)}
    labels = {n[: -len(_LABEL_SUFFIX)]: n for n in names if n.endswith(_LABEL_SUFFIX)}
    if not images:
        raise ValueError(f"MM-WHS dataset directory is empty: no '*{_IMAGE_SUFFIX}' files in {root}")

    for prefix in sorted(images, key=natural_key):
        if prefix not in labels:
            raise FileNotFoundError(
                f"Image {root / images[prefix]} has no label: expected {root / (prefix + _LABEL_SUFFIX)}"
            )
    for prefix in sorted(labels, key=natural_key):
        if prefix not in images:
            raise FileNotFoundError(
                f"Label {root / labels[prefix]} has no image: expected {root / (prefix + _IMAGE_SUFFIX)}"
            )

    cases = []
    for prefix in sorted(images, key=natural_key):
        image, label = str(root / images[prefix]), str(root / labels[prefix])
        _check_same_shape(image, label)
        cases.append({"image": image, "label": label})
    return cases


def load_datalist(path: str | os.PathLike, key: str = "training") -> list[dict]:
    """Load an MSD-style datalist JSON and check the files it references.

    Relative paths are resolved against the folder holding the JSON file.

    Args:
        path: the datalist JSON file, e.g. ``{"training": [{"image": "...", "label": "..."}]}``.
        key: the list to read from the JSON file.

    Returns:
        the datalist items with absolute ``image``/``label`` paths.

    Raises:
        FileNotFoundError: if the JSON file or a file it references does not exist.
        ValueError: if ``key`` is missing from the JSON file, or an image and its label differ in shape.
    """
    json_path = Path(path).expanduser()
    if not json_path.is_file():
        raise FileNotFoundError(f"Datalist file does not exist: {json_path}")
    items = load_decathlon_datalist(json_path, is_segmentation=True, data_list_key=key)

    for item in items:
        for field in ("image", "label"):
            # MSD allows a list of files per entry (multi-channel inputs).
            files = item.get(field, [])
            for file in [files] if isinstance(files, str) else files:
                if not os.path.isfile(file):
                    raise FileNotFoundError(f"Datalist {json_path} references a missing {field} file: {file}")
        if isinstance(item.get("image"), str) and isinstance(item.get("label"), str):
            _check_same_shape(item["image"], item["label"])
    return items


def mmwhs_cases(dataset_dir: str | os.PathLike) -> list[dict]:
    """Return the cases of a dataset given either as an MM-WHS folder or as a datalist JSON file.

    Args:
        dataset_dir: an MM-WHS folder (see :func:`find_mmwhs_cases`) or a ``.json`` datalist
            (see :func:`load_datalist`, ``"training"`` key).

    Returns:
        ``[{"image": path, "label": path}, ...]`` with absolute paths.
    """
    if str(dataset_dir).lower().endswith(".json"):
        return load_datalist(dataset_dir)
    return find_mmwhs_cases(dataset_dir)


def kfold_split(cases: Sequence, num_folds: int = 5, fold: int = 0) -> tuple[list, list]:
    """Split cases into contiguous, near-equal folds and hold one out for validation.

    Fold sizes follow ``numpy.array_split``: the first ``len(cases) % num_folds`` folds get one
    extra case, e.g. 7 cases in 5 folds gives sizes ``2, 2, 1, 1, 1``.

    Args:
        cases: the cases, in the order folds are cut from (usually sorted by case id).
        num_folds: number of folds, at least 2.
        fold: index of the validation fold, in ``[0, num_folds)``.

    Returns:
        ``(train, validation)``: validation is fold ``fold``, train is every other case, in order.

    Raises:
        ValueError: if ``num_folds < 2``, ``fold`` is out of range, or there are fewer cases than folds.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}.")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}.")
    cases = list(cases)
    if len(cases) < num_folds:
        raise ValueError(f"Cannot split {len(cases)} cases into {num_folds} folds: need at least {num_folds} cases.")
    size, extra = divmod(len(cases), num_folds)
    start = fold * size + min(fold, extra)
    stop = start + size + (1 if fold < extra else 0)
    return cases[:start] + cases[stop:], cases[start:stop]


def fold_datalists(dataset_dir: str | os.PathLike, fold: int = 0, num_folds: int = 5) -> dict[str, list]:
    """Discover a dataset and split it for one cross-validation fold.

    Args:
        dataset_dir: an MM-WHS folder or a datalist JSON file, see :func:`mmwhs_cases`.
        fold: index of the validation fold.
        num_folds: number of folds.

    Returns:
        ``{"training": [...], "validation": [...]}``.
    """
    train, val = kfold_split(mmwhs_cases(dataset_dir), num_folds=num_folds, fold=fold)
    return {"training": train, "validation": val}


def find_mmwhs_unlabelled(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Find the unlabelled CT scans of the MM-WHS 2017 release: ``ct_test_*_image.nii.gz`` beside the training folder.

    The release unpacks into ``ct_train/`` (image/label pairs) and ``ct_test/`` (40 images without labels); for
    the training folder ``.../ct_train`` the scans are read from ``.../ct_test``. For a datalist JSON they are its
    ``"test"`` list. Only headers are read: each image must be a 3-D CT volume.

    Args:
        dataset_dir: the training folder (``--dataset_dir``) or a datalist JSON file.

    Returns:
        ``[{"image": path}, ...]`` with absolute paths, sorted by case id.

    Raises:
        FileNotFoundError: the unlabelled folder, or a file the datalist lists, does not exist.
        ValueError: the folder holds no ``ct_test_*_image.nii.gz``, the datalist has no ``"test"`` list, or an image
            is not a 3-D volume.
    """
    if str(dataset_dir).lower().endswith(".json"):
        images = [item["image"] for item in load_datalist(dataset_dir, key="test")]
    else:
        folder = Path(dataset_dir).expanduser().resolve().parent / UNLABELLED_FOLDER
        if not folder.is_dir():
            raise FileNotFoundError(
                f"MM-WHS unlabelled folder does not exist: {folder} (the release's {UNLABELLED_FOLDER}/ beside "
                f"{Path(dataset_dir).name}/); give the unlabelled images with --unlabelled_dir instead."
            )
        images = [str(p) for p in folder.glob(_UNLABELLED_PATTERN) if not p.name.startswith("._")]
        if not images:
            raise ValueError(f"MM-WHS unlabelled folder {folder} holds no '{_UNLABELLED_PATTERN}' files.")
    for image in images:
        try:  # header only
            shape = tuple(nib.load(image).shape)
        except Exception as error:  # nibabel raises several types for unreadable files
            raise ValueError(f"Cannot read the image header of {image}: {error}") from error
        if len(shape) != 3:
            raise ValueError(f"Unlabelled image {image} has shape {shape}: expected a 3-D CT volume (one channel).")
    return [{"image": image} for image in sorted(images, key=natural_key)]
