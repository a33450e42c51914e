"""Medical Segmentation Decathlon (MSD) datasets as distributed: reading, checking and the paper's split."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from custom.definitions import MSD_DATASET_FILE
from custom.errors import LISTING, MISSING, report_problem
from custom.files import natural_key
from custom.headers import check_cases

__all__ = [
    "BRATS_SPLIT",
    "DATASET_FILE",
    "HIPPOCAMPUS_SPLIT",
    "PaperSplit",
    "is_junk",
    "load_image_folder",
    "load_msd_datalist",
    "msd_cases",
    "paper_split",
    "paper_split_datalists",
    "split_sizes",
]

logger = logging.getLogger(__name__)

DATASET_FILE = MSD_DATASET_FILE
_SPLIT_KEYS = ("training", "validation", "test")


@dataclass(frozen=True)
class PaperSplit:
    """A fixed train / validation / test split of an MSD task, by its sizes on the full dataset.

    The last ``test`` cases in sorted order are the test set; the others are shuffled with a seed and cut into
    training and the last ``validation`` of them; smaller datasets are split in the same proportions.

    Attributes:
        source: who splits the task this way, for the description written beside the split.
        cases: labelled cases of the full task.
        test: test cases of the full task.
        validation: validation cases of the full task.
    """

    source: str
    cases: int
    test: int
    validation: int

    def describe(self, train: int, validation: int, test: int) -> str:
        """The rule in words, with the sizes of one split."""
        total = train + validation + test
        return (
            f"{self.source}: the last {test} of {total} cases in sorted order are the test set, the other "
            f"{total - test} are shuffled with the seed into {train} training and {validation} validation cases "
            f"({self.cases - self.test - self.validation} / {self.validation} / {self.test} for the full {self.cases}). "
            "Paths are relative to the dataset folder (base_dir of monai.data.load_decathlon_datalist)."
        )


#: UNETR's MSD Task01 split, used by the DSD paper: of 484 cases the last 24 test, 72 of the other 460 validation.
BRATS_SPLIT = PaperSplit("UNETR's MSD Task01 split, as used by the DSD paper", 484, 24, 72)
#: The DSD authors' MSD Task04 split: of 260 cases the last 60 test, 30 of the other 200 validation.
HIPPOCAMPUS_SPLIT = PaperSplit("The DSD authors' MSD Task04 split", 260, 60, 30)


def is_junk(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a macOS AppleDouble file (``._BRATS_001.nii.gz``), which holds no image data."""
    return Path(path).name.startswith("._")


def _dataset_file(dataset_dir: str | os.PathLike) -> tuple[Path, Path] | None:
    """``(dataset.json, its folder)`` of a task folder or a dataset JSON file; ``None`` after reporting it missing."""
    path = Path(dataset_dir).expanduser()
    if not path.exists():
        report_problem(path, MISSING, "the MSD dataset folder does not exist")
        return None
    json_path = path if path.is_file() else path / DATASET_FILE
    if not json_path.is_file():
        report_problem(json_path, MISSING, f"the MSD dataset folder {path} has no {DATASET_FILE}")
        return None
    return json_path.resolve(), json_path.resolve().parent


def _read_description(json_path: Path) -> dict | None:
    try:
        description = json.loads(json_path.read_text())
    except (OSError, ValueError) as error:
        report_problem(json_path, LISTING, f"is not a readable JSON file: {error}")
        return None
    if not isinstance(description, dict):
        report_problem(json_path, LISTING, f"holds a JSON {type(description).__name__}, not an object of lists")
        return None
    return description


def _entry_fault(entry, labelled: bool) -> str | None:
    """What is wrong with one entry of a list of ``dataset.json``, or ``None``."""
    fields = ("image", "label") if labelled else ("image",)
    if isinstance(entry, str) and not labelled:
        return None  # MSD's own test lists are plain paths
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object with {' and '.join(repr(f) for f in fields)} paths"
    for field in fields:
        if field not in entry:
            return f"has no '{field}' key (its keys: {sorted(entry)})"
        value = entry[field]
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not paths or not all(isinstance(v, str) for v in paths):
            return f"has a '{field}' that is not a path: {value!r}"
    return None


def _listed_cases(json_path: Path, root: Path, key: str) -> list[dict] | None:
    """The entries of one list of ``dataset.json`` with absolute paths, each fault naming the key that is wrong;
    ``None`` when there is no such list."""
    description = _read_description(json_path)
    if description is None:
        return None
    if key not in description:
        report_problem(json_path, LISTING, f"has no '{key}' key (its keys: {sorted(description)})")
        return None
    entries = description[key]
    if not isinstance(entries, list):
        report_problem(json_path, LISTING, f"its '{key}' is a JSON {type(entries).__name__}, not a list of cases")
        return None
    labelled = key != "test"
    cases = []
    for index, entry in enumerate(entries):
        fault = _entry_fault(entry, labelled)
        if fault:
            report_problem(json_path, LISTING, f"entry {index} of its '{key}' list {fault}")
            continue
        entry = {"image": entry} if isinstance(entry, str) else entry
        case = {}
        for field in ("image", "label"):
            if field in entry:
                value = entry[field]
                case[field] = (
                    _absolute(value, root) if isinstance(value, str) else [_absolute(v, root) for v in value]
                )
        cases.append(case)
    return cases


def _absolute(path: str, root: Path) -> str:
    # As monai.data.load_decathlon_datalist resolves a datalist's paths against its base_dir.
    return os.path.normpath(os.path.join(root, path))


def _dataset_name(description: dict | None, root: Path) -> str:
    name = description.get("name") if description else None
    return str(name) if isinstance(name, str) and name else root.name


def load_msd_datalist(
    dataset_dir: str | os.PathLike, key: str = "training", num_channels: int | None = None
) -> list[dict[str, str]]:
    """Read one list of an MSD ``dataset.json``, drop macOS junk entries and check every listed file.

    Only the header of each file is read (:func:`custom.headers.check_cases`): the files exist and are listed
    once, an image has ``num_channels`` channels (last axis, as MSD stores them) and a label is a 3-D map on its
    image's grid.

    Args:
        dataset_dir: the task folder holding ``dataset.json`` (e.g. ``Task01_BrainTumour/``), or the JSON file.
        key: the list to read: ``"training"`` (image/label pairs) or ``"test"`` (images only).
        num_channels: the expected number of image channels; ``None`` skips the check.

    Returns:
        ``[{"image": path, "label": path}, ...]`` (no ``label`` for ``"test"``) with absolute paths,
        in the order of ``dataset.json``; while problems are collected (:func:`custom.errors.collecting_problems`),
        the cases whose files can be read.

    Raises:
        MissingDataError: the folder, its ``dataset.json`` or a listed file does not exist.
        DataError: ``dataset.json`` is not JSON, ``key`` is missing, not a list or lists nothing, an entry lacks
            its ``image`` (or, but for ``"test"``, ``label``) key, a header cannot be read, an image has the
            wrong number of channels, or a label is off its image's grid; the message names the key at fault.
    """
    located = _dataset_file(dataset_dir)
    if located is None:
        return []
    json_path, root = located
    listed = _listed_cases(json_path, root, key)
    if listed is None:
        return []
    kept = []
    for case in listed:
        junk = [case[f] for f in ("image", "label") if isinstance(case.get(f), str) and is_junk(case[f])]
        if junk:
            logger.warning(f"Skipping the macOS metadata file {junk[0]} listed in {json_path}.")
            continue
        kept.append(case)
    if not kept:
        report_problem(json_path, LISTING, f"its '{key}' list holds no cases")
    dataset = _dataset_name(_read_description(json_path), root)
    return check_cases(kept, num_channels, dataset, json_path)


def msd_cases(dataset_dir: str | os.PathLike, num_channels: int | None = None) -> list[dict[str, str]]:
    """Every case an MSD task lists, checked from the headers: its labelled ``training`` cases, then its ``test``
    images when it lists any. See :func:`load_msd_datalist`."""
    located = _dataset_file(dataset_dir)
    description = _read_description(located[0]) if located else None
    if description is None:
        return []
    cases = load_msd_datalist(dataset_dir, "training", num_channels)
    if description.get("test"):
        cases += load_msd_datalist(dataset_dir, "test", num_channels)
    return cases


def split_sizes(num_cases: int, rule: PaperSplit = BRATS_SPLIT) -> tuple[int, int, int]:
    """Sizes of a fixed split: the rule's own on the full task (388 / 72 / 24 of 484 BraTS cases), proportional
    (at least one each) on other numbers of cases.

    Args:
        num_cases: number of labelled cases.
        rule: the split, e.g. :data:`BRATS_SPLIT` or :data:`HIPPOCAMPUS_SPLIT`.

    Returns:
        ``(training, validation, test)``.

    Raises:
        ValueError: fewer than 3 cases.
    """
    if num_cases < 3:
        raise ValueError(f"The paper split needs at least 3 cases (train, validation, test), got {num_cases}.")

    def rounded(x: float) -> int:  # round half up: Python's round() would take 2.5 to 2
        return math.floor(x + 0.5)

    test = min(max(1, rounded(num_cases * rule.test / rule.cases)), num_cases - 2)
    rest = num_cases - test
    validation = min(max(1, rounded(rest * rule.validation / (rule.cases - rule.test))), rest - 1)
    return rest - validation, validation, test


def paper_split(cases: Sequence[dict], seed: int = 0, rule: PaperSplit = BRATS_SPLIT) -> dict[str, list[dict]]:
    """Split cases by a fixed rule, by default as UNETR and the DSD paper do on MSD Task01.

    Cases are sorted by image path (numbers compare as numbers); the last ones form the test set,
    the others are shuffled with ``seed`` and cut into training and validation; sizes from :func:`split_sizes`.

    Args:
        cases: ``{"image": ..., "label": ...}`` dictionaries, in any order.
        seed: seed of the shuffle.
        rule: the split's sizes on the full task.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``; test in sorted order.
    """
    ordered = sorted(cases, key=lambda case: natural_key(str(case["image"])))
    train, validation, test = split_sizes(len(ordered), rule)
    rest = ordered[: train + validation]
    shuffled = [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))]
    return {"training": shuffled[:train], "validation": shuffled[train:], "test": ordered[train + validation :]}


def _relative(path: str, root: Path) -> str:
    relative = os.path.relpath(path, root)
    return path if relative.startswith("..") else Path(relative).as_posix()


def paper_split_datalists(
    dataset_dir: str | os.PathLike,
    datalist_file: str | os.PathLike,
    seed: int = 0,
    num_channels: int | None = None,
    rule: PaperSplit = BRATS_SPLIT,
) -> dict[str, list[dict[str, str]]]:
    """The fixed split of an MSD task's labelled cases, kept in a datalist file so that it is fixed and inspectable.

    The first call writes ``datalist_file``: an MSD-style datalist with ``training``, ``validation``
    and ``test`` lists (paths relative to the dataset folder, readable with
    ``monai.data.load_decathlon_datalist(datalist_file, data_list_key=..., base_dir=dataset_dir)``),
    the ``seed`` and a description of the rule. Later calls read the split back from that file
    instead of recomputing it; the file is never overwritten.

    Args:
        dataset_dir: the task folder holding ``dataset.json``, or the JSON file.
        datalist_file: where the split is written, or read if it exists.
        seed: seed of the train/validation shuffle; must match the seed recorded in an existing file.
        num_channels: the expected number of image channels, see :func:`load_msd_datalist`.
        rule: the split's sizes on the full task, :data:`BRATS_SPLIT` by default.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` with absolute paths.

    Raises:
        FileNotFoundError: see :func:`load_msd_datalist`.
        ValueError: see :func:`load_msd_datalist`; or an existing ``datalist_file`` is not a split of
            this dataset's cases or was made with another seed.
    """
    cases = load_msd_datalist(dataset_dir, "training", num_channels)
    _, root = _dataset_file(dataset_dir)
    by_name = {_relative(case["image"], root): case for case in cases}
    target = Path(datalist_file).expanduser()
    if target.exists():
        names = _read_split(target, set(by_name), seed)
        logger.info(f"Using the data split in {target} (seed {seed}).")
    else:
        split = paper_split(cases, seed, rule)
        names = {key: [_relative(case["image"], root) for case in split[key]] for key in _SPLIT_KEYS}
        _write_split(target, names, by_name, root, seed, rule)
        logger.info(f"Wrote the data split to {target} (seed {seed}).")
    return {key: [dict(by_name[name]) for name in names[key]] for key in _SPLIT_KEYS}


def _read_split(path: Path, dataset_names: set[str], seed: int) -> dict[str, list[str]]:
    remedy = "delete it to make a new split, or pass another --datalist_file"
    try:
        content = json.loads(path.read_text())
        names = {key: [str(item["image"]) for item in content[key]] for key in _SPLIT_KEYS}
        recorded_seed = content["seed"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"Cannot read the data split {path} (expected 'seed' and {list(_SPLIT_KEYS)} image lists): {error}; "
            f"{remedy}."
        ) from error
    if recorded_seed != seed:
        raise ValueError(f"The data split {path} was made with seed {recorded_seed}, not {seed}; {remedy}.")
    listed = [name for key in _SPLIT_KEYS for name in names[key]]
    duplicated = sorted({name for name in listed if listed.count(name) > 1})
    missing, unknown = sorted(dataset_names - set(listed)), sorted(set(listed) - dataset_names)
    if duplicated or missing or unknown:
        details = [
            f"{len(v)} {what} (e.g. {v[0]})"
            for what, v in (("listed twice", duplicated), ("not in it", missing), ("not in the dataset", unknown))
            if v
        ]
        raise ValueError(
            f"The data split {path} does not split this dataset's cases: {'; '.join(details)}; {remedy}."
        )
    return names


def _write_split(
    path: Path, names: dict[str, list[str]], by_name: dict, root: Path, seed: int, rule: PaperSplit
) -> None:
    train, val, test = (len(names[key]) for key in _SPLIT_KEYS)
    content: dict = {
        "description": rule.describe(train, val, test),
        "seed": seed,
    }
    for key in _SPLIT_KEYS:
        content[key] = [{f: _relative(by_name[name][f], root) for f in ("image", "label")} for name in names[key]]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Mode "x": if another run wrote the file in the meantime, fail rather than overwrite it.
    with open(path, "x") as f:
        f.write(json.dumps(content, indent=4) + "\n")


#: File endings of the images :func:`load_image_folder` reads.
IMAGE_SUFFIXES = (".nii.gz", ".nii")


def load_image_folder(folder: str | os.PathLike, num_channels: int | None = None) -> list[dict[str, str]]:
    """Read a folder of NIfTI images without labels, such as MSD's ``imagesTs`` or new scans, checking every header.

    Images are the ``*.nii.gz`` and ``*.nii`` files directly in ``folder``, macOS junk (``._*``) left out. Only
    headers are read: an image has ``num_channels`` channels, as :func:`load_msd_datalist` checks them (a 3-D
    volume for one channel, channels last otherwise).

    Args:
        folder: the folder of images.
        num_channels: the expected number of image channels; ``None`` skips the check.

    Returns:
        ``[{"image": path}, ...]`` with absolute paths, in natural order of their names.

    Raises:
        MissingDataError: ``folder`` does not exist or is not a folder.
        DataError: the folder holds no image, a header cannot be read, or an image has the wrong number of channels.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        report_problem(root, MISSING, "the image folder does not exist or is not a folder")
        return []
    root = root.resolve()
    images = sorted(
        (str(p) for p in root.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES) and not is_junk(p)),
        key=natural_key,
    )
    if not images:
        report_problem(root, LISTING, f"the image folder holds no {' or '.join(IMAGE_SUFFIXES)} images")
        return []
    return check_cases([{"image": image} for image in images], num_channels, "the image folder", root)
