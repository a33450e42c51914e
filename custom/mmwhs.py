"""The MM-WHS 2017 dataset as distributed: finding its cases, datalist files, and the k-fold split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from monai.data import load_decathlon_datalist

from custom.errors import LISTING, MISSING, report_problem
from custom.files import natural_key
from custom.headers import check_cases

__all__ = [
    "MMWHS_DATASET",
    "find_mmwhs_cases",
    "load_datalist",
    "mmwhs_cases",
    "kfold_split",
    "fold_datalists",
    "find_mmwhs_unlabelled",
]

_IMAGE_SUFFIX = "_image.nii.gz"
_LABEL_SUFFIX = "_label.nii.gz"
#: The dataset's name in messages.
MMWHS_DATASET = "MM-WHS CT"
#: The folder of the unlabelled CT scans in the MM-WHS 2017 release, beside the training folder ``ct_train``.
UNLABELLED_FOLDER = "ct_test"
_UNLABELLED_PATTERN = "ct_test_*" + _IMAGE_SUFFIX


def find_mmwhs_cases(dataset_dir: str | os.PathLike, num_channels: int = 1) -> list[dict[str, str]]:
    """Find the image/label pairs of an MM-WHS 2017 style folder and check them from their headers.

    The folder holds ``<prefix>_image.nii.gz`` and ``<prefix>_label.nii.gz`` pairs side by side,
    e.g. ``ct_train_1001_image.nii.gz`` and ``ct_train_1001_label.nii.gz``. Files starting with
    ``._`` (macOS resource forks) are ignored. Only headers are read (:func:`custom.headers.check_cases`).

    Args:
        dataset_dir: folder holding the image and label files.
        num_channels: the images' number of channels (1 for CT).

    Returns:
        ``[{"image": path, "label": path}, ...]`` with absolute paths, sorted by case id; while problems are
        collected (:func:`custom.errors.collecting_problems`), the cases whose files can be read.

    Raises:
        MissingDataError: ``dataset_dir`` does not exist, or an image has no label or a label has no image.
        DataError: ``dataset_dir`` is not a folder or holds no ``*_image.nii.gz`` file, a header cannot be read,
            an image has the wrong number of channels, or a label is off its image's grid.
    """
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        report_problem(root, MISSING, "the MM-WHS dataset folder does not exist")
        return []
    if not root.is_dir():
        report_problem(root, LISTING, "the MM-WHS dataset path is not a folder (nor a .json datalist)")
        return []
    root = root.resolve()

    names = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("._")]
    images = {n[: -len(_IMAGE_SUFFIX)]: n for n in names if n.endswith(_IMAGE_SUFFIX)}
    labels = {n[: -len(_LABEL_SUFFIX)]: n for n in names if n.endswith(_LABEL_SUFFIX)}
    if not images:
        report_problem(root, LISTING, f"the MM-WHS dataset folder is empty: no '*{_IMAGE_SUFFIX}' files")
        return []

    for prefix in sorted(labels, key=natural_key):
        if prefix not in images:
            report_problem(
                root / labels[prefix], MISSING, f"the label has no image: expected {root / (prefix + _IMAGE_SUFFIX)}"
            )
    cases = []
    for prefix in sorted(images, key=natural_key):
        if prefix in labels:
            cases.append({"image": str(root / images[prefix]), "label": str(root / labels[prefix])})
        else:
            report_problem(
                root / images[prefix], MISSING, f"the image has no label: expected {root / (prefix + _LABEL_SUFFIX)}"
            )
    return check_cases(cases, num_channels, MMWHS_DATASET, root)


def load_datalist(path: str | os.PathLike, key: str = "training", num_channels: int = 1) -> list[dict]:
    """Load an MSD-style datalist JSON and check the files it references from their headers.

    Relative paths are resolved against the folder holding the JSON file.

    Args:
        path: the datalist JSON file, e.g. ``{"training": [{"image": "...", "label": "..."}]}``.
        key: the list to read from the JSON file.
        num_channels: the images' number of channels (1 for CT).

    Returns:
        the datalist items with absolute ``image``/``label`` paths.

    Raises:
        MissingDataError: the JSON file or a file it references does not exist.
        DataError: ``key`` is missing from the JSON file, a header cannot be read, an image has the wrong number
            of channels, or a label is off its image's grid.
    """
    json_path = Path(path).expanduser()
    if not json_path.is_file():
        report_problem(json_path, MISSING, "the datalist file does not exist")
        return []
    try:
        items = load_decathlon_datalist(json_path, is_segmentation=True, data_list_key=key)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        report_problem(json_path, LISTING, f"cannot read its '{key}' list: {error}")
        return []
    return check_cases(items, num_channels, MMWHS_DATASET, json_path)


def mmwhs_cases(dataset_dir: str | os.PathLike, num_channels: int = 1) -> list[dict]:
    """Return the cases of a dataset given either as an MM-WHS folder or as a datalist JSON file.

    Args:
        dataset_dir: an MM-WHS folder (see :func:`find_mmwhs_cases`) or a ``.json`` datalist
            (see :func:`load_datalist`, ``"training"`` key).
        num_channels: the images' number of channels (1 for CT).

    Returns:
        ``[{"image": path, "label": path}, ...]`` with absolute paths.
    """
    if str(dataset_dir).lower().endswith(".json"):
        return load_datalist(dataset_dir, num_channels=num_channels)
    return find_mmwhs_cases(dataset_dir, num_channels)


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


def fold_datalists(
    dataset_dir: str | os.PathLike, fold: int = 0, num_folds: int = 5, num_channels: int = 1
) -> dict[str, list]:
    """Discover a dataset and split it for one cross-validation fold.

    Args:
        dataset_dir: an MM-WHS folder or a datalist JSON file, see :func:`mmwhs_cases`.
        fold: index of the validation fold.
        num_folds: number of folds.
        num_channels: the images' number of channels (1 for CT).

    Returns:
        ``{"training": [...], "validation": [...]}``.
    """
    train, val = kfold_split(mmwhs_cases(dataset_dir, num_channels), num_folds=num_folds, fold=fold)
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
        MissingDataError: the unlabelled folder, or a file the datalist lists, does not exist.
        DataError: the folder holds no ``ct_test_*_image.nii.gz``, the datalist has no ``"test"`` list, or an image
            cannot be read or is not a 3-D volume.
    """
    if str(dataset_dir).lower().endswith(".json"):
        images = [item["image"] for item in load_datalist(dataset_dir, key="test")]
        listing = dataset_dir
    else:
        listing = Path(dataset_dir).expanduser().resolve().parent / UNLABELLED_FOLDER
        if not listing.is_dir():
            report_problem(
                listing,
                MISSING,
                f"the MM-WHS unlabelled folder (the release's {UNLABELLED_FOLDER}/ beside {Path(dataset_dir).name}/) "
                "does not exist; give the unlabelled images with --unlabelled_dir instead",
            )
            return []
        images = [str(p) for p in listing.glob(_UNLABELLED_PATTERN) if not p.name.startswith("._")]
        if not images:
            report_problem(listing, LISTING, f"the MM-WHS unlabelled folder holds no '{_UNLABELLED_PATTERN}' files")
            return []
    cases = [{"image": image} for image in sorted(images, key=natural_key)]
    return check_cases(cases, 1, MMWHS_DATASET, listing)
