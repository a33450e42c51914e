"""Synthetic datasets in the layout of MSD tasks: Task01 (BraTS, 4-D multi-modal MRI) and Task04 (hippocampus)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from custom.definitions import BRATS_LABEL_NAMES, BRATS_MODALITIES, HIPPOCAMPUS_CLASS_NAMES
from custom.definitions import MSD_DATASET_FILE as DATASET_FILE
from dsd_lab.data.volumes import affine_matrix, check_synthetic_args, ellipsoid, fov_coords, save_nifti

__all__ = ["make_brats", "make_hippocampus", "write_msd_task"]

# Intensity of each tissue in the four MSD channels (FLAIR, T1w, t1gd, T2w), before a per-case gain per
# channel. As in real scans: edema is bright in FLAIR and T2w, the non-enhancing core dark in T1w and
# bright in T2w, the enhancing tumour bright in t1gd only; ventricles (CSF) are bright in T2w but dark in FLAIR.
_BRATS_TISSUE = {
    "brain": (300.0, 500.0, 480.0, 320.0),
    "ventricle": (80.0, 180.0, 170.0, 1000.0),
    "edema": (720.0, 380.0, 390.0, 760.0),
    "non_enhancing": (430.0, 260.0, 280.0, 940.0),
    "enhancing": (560.0, 450.0, 1150.0, 620.0),
}
_BRATS_ORIENTATION = ("L", "P", "S")  # not RAS, so that loaders must reorient
_BRATS_NOISE = 15.0
# Apple's AppleDouble header ("Mac OS X" resource fork) that macOS tar leaves as ._<name> beside each file.
_APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4072)


def _brats_case(
    rng: np.random.Generator, shape: Sequence[int] | None, enhancing: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if shape is None:
        # A quarter of MSD's 240 x 240 x 155 grid, jittered; sizes dividing by 16 would hide missing padding.
        shape = [int(rng.integers(44, 57)), int(rng.integers(44, 57)), int(rng.integers(30, 41))]
        shape = [n + 1 if n % 16 == 0 else n for n in shape]
    shape = tuple(int(n) for n in shape)
    affine = affine_matrix(_BRATS_ORIENTATION, np.ones(3), shape, centre=rng.uniform(-20, 20, size=3))
    half_extent = np.abs(affine[:3, :3]) @ (np.asarray(shape) / 2.0)
    coords = fov_coords(affine, shape, half_extent)
    full = np.broadcast_shapes(*(c.shape for c in coords))

    tissue = np.zeros(full, np.uint8)  # index into _BRATS_TISSUE + 1; 0 is outside the skull-stripped brain
    brain = ellipsoid(coords, rng.uniform(-0.03, 0.03, size=3), rng.uniform(0.78, 0.88, size=3))
    tissue[brain] = 1
    for side in (-1, 1):
        ventricle = ellipsoid(coords, (side * 0.12, 0.05, 0.05), (0.07, 0.25, 0.15))
        tissue[ventricle & brain] = 2

    # The tumour: an edema ellipsoid around a core whose outer shell enhances and whose inside does not.
    centre = rng.uniform(-0.3, 0.3, size=3)
    edema_axes = rng.uniform(0.35, 0.45, size=3)
    core_axes = edema_axes * rng.uniform(0.6, 0.72)
    core = ellipsoid(coords, centre, core_axes) & brain
    inner = ellipsoid(coords, centre, core_axes * rng.uniform(0.5, 0.62)) if enhancing else core
    label = np.zeros(full, np.uint8)
    label[ellipsoid(coords, centre, edema_axes) & brain] = 1
    label[core] = 3 if enhancing else 2
    label[inner & core] = 2
    tissue[label > 0] = label[label > 0] + 2

    levels = np.array([[0.0] * 4, *_BRATS_TISSUE.values()], np.float32)  # (tissue, channel)
    gains = rng.uniform(0.7, 1.4, size=4).astype(np.float32)  # scanners differ: z-scoring must undo this
    image = levels[tissue] * gains
    for c in range(4):
        image[..., c] = gaussian_filter(image[..., c], sigma=0.7)
    image += rng.normal(0.0, _BRATS_NOISE, size=image.shape).astype(np.float32)
    image[tissue == 0] = 0.0  # skull-stripped: exactly zero outside the brain, as MSD
    return np.rint(np.clip(image, 0, None)).astype(np.float32), label, affine


def make_brats(
    out_dir: str | os.PathLike,
    cases: int = 8,
    test_cases: int = 2,
    seed: int = 0,
    shape: Sequence[int] | None = None,
) -> list[str]:
    """Write a synthetic brain tumour dataset in the layout of MSD Task01 (``Task01_BrainTumour/``).

    ``out_dir`` gets a ``dataset.json`` like MSD's (modalities, labels, a ``training`` list in
    unsorted order and a ``test`` list), ``imagesTr/BRATS_NNN.nii.gz`` float32 4-D images with the
    four channels last (FLAIR, T1w, t1gd, T2w; zero outside the brain), ``labelsTr/BRATS_NNN.nii.gz``
    uint8 labels in MSD coding (1 edema, 2 non-enhancing tumour, 3 enhancing tumour), unlabelled
    ``imagesTs/`` images, and beside every file the macOS ``._BRATS_NNN.nii.gz`` junk of the
    distributed archive. The tumour is an edema region around a core whose outer shell enhances;
    every fourth case (index 3, 7, ...) has no enhancing tumour, as some real cases. Volumes have
    1 mm voxels, LPS orientation and sizes around a quarter of MSD's that are not multiples of 16.

    Case ``i`` depends only on ``(seed, i)``.

    Args:
        out_dir: the task folder to write, created if missing.
        cases: number of labelled cases, ``BRATS_001`` ... in ``imagesTr``/``labelsTr``.
        test_cases: number of unlabelled cases in ``imagesTs``, numbered after the labelled ones.
        seed: random seed.
        shape: optional voxel shape ``(i, j, k)`` of every case, instead of a random one.

    Returns:
        the written image and label paths (image then label for each case, then the test images).

    Raises:
        FileExistsError: ``out_dir`` already holds a ``dataset.json`` or MSD data folder; nothing is written.
        ValueError: ``cases``, ``test_cases``, ``seed`` or ``shape`` is invalid.
    """
    return write_msd_task(
        out_dir,
        cases,
        test_cases,
        seed,
        lambda rng, i: _brats_case(rng, shape, enhancing=i % 4 != 3),
        case_name=lambda i: f"BRATS_{i + 1:03d}",
        header={
            "name": "BRATS",
            "description": "Synthetic gliomas in the layout of MSD Task01_BrainTumour (monai-dsd test data)",
            "tensorImageSize": "4D",
            "modality": {str(i): name for i, name in enumerate(BRATS_MODALITIES)},
            "labels": {str(i): name for i, name in enumerate(BRATS_LABEL_NAMES)},
        },
        expected_labels=lambda i: {0, 1, 2, 3} if i % 4 != 3 else {0, 1, 2},
        shape=shape,
    )


def write_msd_task(
    out_dir: str | os.PathLike,
    cases: int,
    test_cases: int,
    seed: int,
    make_case: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    case_name: Callable[[int], str],
    header: dict,
    expected_labels: Callable[[int], set[int]],
    shape: Sequence[int] | None = None,
) -> list[str]:
    """Write an MSD task folder: ``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``, and macOS junk.

    Case ``i`` is ``make_case(numpy.random.default_rng([seed, i]), i)``, so that it depends only on
    ``(seed, i)``; the first ``cases`` are labelled, the next ``test_cases`` go to ``imagesTs`` without labels.
    Beside every file lies the ``._<name>`` AppleDouble file of the distributed archives. ``dataset.json`` holds
    ``header``, the counts, the ``training`` list in unsorted order (as MSD lists it) and the ``test`` list.

    Args:
        out_dir: the task folder to write, created if missing.
        cases: number of labelled cases.
        test_cases: number of unlabelled cases.
        seed: random seed.
        make_case: ``(rng, index) -> (image, label, affine)``.
        case_name: ``index -> file name stem``, e.g. ``BRATS_001``.
        header: the descriptive keys of ``dataset.json`` (name, modality, labels, ...).
        expected_labels: ``index -> the label values the case must hold``, guarding the geometry against edits.
        shape: the shape argument of the maker, checked here.

    Returns:
        the written image and label paths (image then label for each case, then the test images).

    Raises:
        FileExistsError: ``out_dir`` already holds a ``dataset.json`` or MSD data folder; nothing is written.
        ValueError: ``cases``, ``test_cases``, ``seed`` or ``shape`` is invalid.
    """
    check_synthetic_args(cases, seed, shape)
    if int(test_cases) != test_cases or test_cases < 0:
        raise ValueError(f"test_cases must be a non-negative integer, got {test_cases!r}.")
    out = Path(out_dir).expanduser()
    for name in (DATASET_FILE, "imagesTr", "labelsTr", "imagesTs"):
        if (out / name).exists():
            raise FileExistsError(f"Refusing to overwrite: {out / name} already exists.")
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (out / folder).mkdir(parents=True)

    paths, training, test = [], [], []
    for i in range(int(cases) + int(test_cases)):
        image, label, affine = make_case(np.random.default_rng([int(seed), i]), i)
        found, expected = set(np.unique(label).tolist()), expected_labels(i)
        if found != expected:
            raise RuntimeError(f"Synthetic case {i} has labels {sorted(found)}, expected {sorted(expected)}.")
        name = f"{case_name(i)}.nii.gz"
        labelled = i < cases
        files = [("imagesTr" if labelled else "imagesTs", image)] + ([("labelsTr", label)] if labelled else [])
        for folder, data in files:
            save_nifti(data, affine, out / folder / name)
            (out / folder / f"._{name}").write_bytes(_APPLE_DOUBLE)
            paths.append(str(out / folder / name))
        if labelled:
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")

    order = np.random.default_rng(int(seed)).permutation(len(training))
    description = {
        **header,
        "numTraining": int(cases),
        "numTest": int(test_cases),
        "training": [training[j] for j in order],
        "test": test,
    }
    (out / DATASET_FILE).write_text(json.dumps(description, indent=4) + "\n")
    print(f"Wrote {cases} + {test_cases} synthetic {header['name']} case(s) (seed {seed}) to {out}")
    return paths


# Hippocampus tissue intensities of a T1 scan before a per-case gain: the hippocampus is grey matter between
# brighter white matter and the dark CSF of the temporal horn, so that its outline must be learnt from context.
_HIPPOCAMPUS_TISSUE = {"grey": 430.0, "white": 640.0, "csf": 140.0, "hippocampus": 500.0}
_HIPPOCAMPUS_ORIENTATION = ("L", "A", "S")  # not RAS, so that loaders must reorient
_HIPPOCAMPUS_NOISE = 20.0


def _hippocampus_case(
    rng: np.random.Generator, shape: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if shape is None:
        # MSD Task04 crops are about 35 x 50 x 35 voxels of 1 mm; sizes dividing by 16 would hide missing padding.
        shape = [int(rng.integers(31, 41)), int(rng.integers(44, 57)), int(rng.integers(30, 41))]
        shape = [n + 1 if n % 16 == 0 else n for n in shape]
    shape = tuple(int(n) for n in shape)
    affine = affine_matrix(_HIPPOCAMPUS_ORIENTATION, np.ones(3), shape, centre=rng.uniform(-20, 20, size=3))
    half_extent = np.abs(affine[:3, :3]) @ (np.asarray(shape) / 2.0)
    x, y, z = fov_coords(affine, shape, half_extent)
    full = np.broadcast_shapes(x.shape, y.shape, z.shape)

    image = np.full(full, _HIPPOCAMPUS_TISSUE["grey"], np.float32)
    image[np.broadcast_to((x - 0.35) ** 2 / 0.5 + (z - 0.45) ** 2 / 0.3 <= 1.0, full)] = _HIPPOCAMPUS_TISSUE["white"]
    # The structure runs along the anterior-posterior axis: a thick head in front, a thinner body and tail behind
    # that rises towards the top; the label changes where the two meet.
    shift = rng.uniform(-0.06, 0.06, size=3)
    head_axes, tail_axes = rng.uniform(0.9, 1.1, size=2)[:, None] * np.array([[0.42, 0.38, 0.38], [0.3, 0.45, 0.26]])
    head = ellipsoid((x, y, z), shift + (0.0, 0.3, -0.05), head_axes)
    tail = ellipsoid((x, y - 0.5 * z, z), shift + (0.0, -0.3, 0.08), tail_axes)
    horn = ellipsoid((x, y, z), shift + (0.38, 0.25, 0.3), (0.18, 0.3, 0.14))
    label = np.zeros(full, np.uint8)
    label[tail] = 2
    label[head & (y >= shift[1])] = 1
    image[horn & (label == 0)] = _HIPPOCAMPUS_TISSUE["csf"]
    image[label > 0] = _HIPPOCAMPUS_TISSUE["hippocampus"]

    image = gaussian_filter(image, sigma=0.7) * rng.uniform(0.8, 1.25)  # scanners differ: scaling must undo this
    image += rng.normal(0.0, _HIPPOCAMPUS_NOISE, size=full).astype(np.float32)
    return np.clip(image, 0, None).astype(np.float32), label, affine


def make_hippocampus(
    out_dir: str | os.PathLike,
    cases: int = 10,
    test_cases: int = 2,
    seed: int = 0,
    shape: Sequence[int] | None = None,
) -> list[str]:
    """Write a synthetic hippocampus dataset in the layout of MSD Task04 (``Task04_Hippocampus/``).

    ``out_dir`` gets a ``dataset.json`` like MSD's (one MRI modality, labels background / Anterior / Posterior, a
    ``training`` list in unsorted order and a ``test`` list), ``imagesTr/hippocampus_NNN.nii.gz`` float32 3-D T1
    images, ``labelsTr/hippocampus_NNN.nii.gz`` uint8 labels (1 anterior, 2 posterior), unlabelled ``imagesTs/``
    images and the macOS ``._*`` junk of the distributed archive. Case numbers have gaps, as MSD's do. The
    hippocampus is a grey-matter structure, thick in front (anterior, the head) and thinner behind (posterior,
    body and tail), beside brighter white matter and the dark temporal horn. Volumes have 1 mm voxels, LAS
    orientation and MSD's crop sizes of about 35 x 50 x 35 voxels, none a multiple of 16.

    Case ``i`` depends only on ``(seed, i)``.

    Args:
        out_dir: the task folder to write, created if missing.
        cases: number of labelled cases.
        test_cases: number of unlabelled cases in ``imagesTs``, numbered after the labelled ones.
        seed: random seed.
        shape: optional voxel shape ``(i, j, k)`` of every case, instead of a random one.

    Returns:
        the written image and label paths (image then label for each case, then the test images).

    Raises:
        FileExistsError: ``out_dir`` already holds a ``dataset.json`` or MSD data folder; nothing is written.
        ValueError: ``cases``, ``test_cases``, ``seed`` or ``shape`` is invalid.
    """
    return write_msd_task(
        out_dir,
        cases,
        test_cases,
        seed,
        lambda rng, i: _hippocampus_case(rng, shape),
        case_name=lambda i: f"hippocampus_{1 + i + i // 3:03d}",
        header={
            "name": "Hippocampus",
            "description": "Synthetic hippocampi in the layout of MSD Task04_Hippocampus (monai-dsd test data)",
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        },
        expected_labels=lambda i: set(range(len(HIPPOCAMPUS_CLASS_NAMES))),
        shape=shape,
    )
