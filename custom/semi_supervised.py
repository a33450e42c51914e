"""Data of semi-supervised training: the share of training labels kept, the unlabelled images, their transforms.

A labelled fraction below 1 keeps the labels of a seeded random share of the training cases and records which in a
JSON file; the images of the other training cases join the unlabelled images, which come from the dataset's own
unlabelled set or from a folder. Validation and test images are never unlabelled training data.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import MapTransform, RandCropByLabelClassesd, RandCropByPosNegLabeld

from custom.files import atomic_write_json, natural_key

__all__ = ["EVALUATION_SPLITS", "check_fraction", "image_only", "split_labels", "unlabelled_cases"]

#: The lists of a datalist whose images are held out for evaluation, and so never unlabelled training data.
EVALUATION_SPLITS = ("validation", "test")
_LABEL_GUIDED_CROPS = (RandCropByPosNegLabeld, RandCropByLabelClassesd)


def check_fraction(fraction: Any) -> float:
    """The labelled fraction as a float.

    Raises:
        ValueError: it is not a number in (0, 1].
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise ValueError(f"labelled_fraction must be a number in (0, 1], got {fraction!r}.")
    return value


def split_labels(
    cases: Sequence[Mapping[str, Any]], fraction: float, seed: int, record_file: str | os.PathLike
) -> dict[str, list[dict[str, Any]]]:
    """Keep the labels of a seeded random share of the training cases; the others become unlabelled images.

    Cases are put in the natural order of their image paths, shuffled with ``numpy.random.default_rng(seed)``,
    and the first ``round(fraction * len(cases))`` (at least one, halves rounded up) keep their labels. Below a
    fraction of 1 the split is written to ``record_file`` (fraction, seed, the labelled cases, the unlabelled
    images); a later call with the same cases and settings finds the same split in it, and a file that records
    another split is refused rather than overwritten.

    Args:
        cases: the labelled training cases, ``{"image": ..., "label": ...}``.
        fraction: the share of cases that keep their labels, in (0, 1]; 1 keeps all and writes nothing.
        seed: seed of the shuffle.
        record_file: where the split is recorded.

    Returns:
        ``{"labelled": [...], "unlabelled": [{"image": ...}, ...]}``, each in the natural order of the image paths.

    Raises:
        ValueError: a fraction outside (0, 1], no cases, or ``record_file`` records another split.
    """
    fraction = check_fraction(fraction)
    if not cases:
        raise ValueError("There are no training cases to keep labels of.")
    if fraction == 1.0:
        return {"labelled": [dict(case) for case in cases], "unlabelled": []}
    ordered = sorted(cases, key=lambda case: natural_key(str(case["image"])))
    kept = max(1, math.floor(fraction * len(ordered) + 0.5))
    chosen = set(np.random.default_rng(int(seed)).permutation(len(ordered))[:kept].tolist())
    split = {
        "labelled": [dict(case) for i, case in enumerate(ordered) if i in chosen],
        "unlabelled": [{"image": case["image"]} for i, case in enumerate(ordered) if i not in chosen],
    }
    record = {
        "description": (
            f"The labels of {kept} of {len(ordered)} training cases are kept (labelled_fraction {fraction}): "
            f"the cases in natural order of their image paths, shuffled with numpy.random.default_rng({int(seed)}), "
            "the first of them kept; the images of the others are unlabelled training data."
        ),
        "labelled_fraction": fraction,
        "labelled_seed": int(seed),
        **split,
    }
    _record_split(Path(record_file), record)
    return split


def _record_split(path: Path, record: dict) -> None:
    if not path.exists():
        atomic_write_json(path, record)
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read the recorded labelled cases {path}: {error}.") from error
    keys = ("labelled_fraction", "labelled_seed", "labelled", "unlabelled")
    differing = [key for key in keys if recorded.get(key) != record[key]]
    if differing:
        raise ValueError(
            f"{path} records another split of the training labels (it differs in {', '.join(differing)}): "
            "a run folder keeps one split. Delete the file to make a new one, or train into another output_dir."
        )


def unlabelled_cases(
    dropped: Sequence[Mapping[str, Any]],
    extra: Sequence[Mapping[str, Any]],
    datalist: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """The unlabelled training images: training cases whose labels were dropped, then the extra unlabelled images.

    Args:
        dropped: the ``"unlabelled"`` list of :func:`split_labels`.
        extra: unlabelled images of the dataset or of a folder, ``{"image": ...}``.
        datalist: the run's datalist; the images of its :data:`EVALUATION_SPLITS` must not be among them.

    Returns:
        ``[{"image": path}, ...]``.

    Raises:
        ValueError: an unlabelled image is a validation or test image, or there is no unlabelled image.
    """
    images = [{"image": item["image"]} for item in (*dropped, *extra)]
    held_out = {
        os.path.realpath(str(case["image"])): split for split in EVALUATION_SPLITS for case in datalist.get(split, [])
    }
    for item in images:
        split = held_out.get(os.path.realpath(str(item["image"])))
        if split is not None:
            raise ValueError(
                f"The unlabelled image {item['image']} is a {split} image of this run; validation and test "
                "images are never training data. Give --unlabelled_dir a folder without them."
            )
    if not images:
        raise ValueError("There are no unlabelled images: give the dataset's unlabelled set or --unlabelled_dir.")
    return images


def image_only(transforms: Sequence[Any], crop: Any) -> list[Any]:
    """A labelled pipeline's transforms made to run on items that hold an image and no label.

    Dictionary transforms skip the keys an item lacks (``allow_missing_keys``), so that a transform of
    ``["image", "label"]`` acts on the image alone and one of ``"label"`` does nothing; a crop guided by the label
    (``RandCropByPosNegLabeld``, ``RandCropByLabelClassesd``) gives way to ``crop``. The transforms are changed in
    place: give fresh instances, e.g. a copy of the training transforms' config (``%train#random_transforms``).

    Args:
        transforms: the labelled pipeline's transforms, in order.
        crop: the label-free crop, e.g. ``RandSpatialCropSamplesd`` of the same size and number of samples.

    Returns:
        The transforms, in order.
    """
    result = []
    for transform in transforms:
        if isinstance(transform, _LABEL_GUIDED_CROPS):
            transform = crop
        elif isinstance(transform, MapTransform):
            transform.allow_missing_keys = True
        result.append(transform)
    return result
