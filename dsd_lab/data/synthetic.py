"""Small synthetic datasets written in the layout of the real ones, for tests and smoke runs.

Usage::

    dsd-synthetic mmwhs OUT_DIR [--cases N] [--seed S]
    dsd-synthetic brats OUT_DIR [--cases N] [--test_cases M] [--seed S]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from custom.definitions import BRATS_LABEL_NAMES, BRATS_MODALITIES, MMWHS_LABEL_CODES
from custom.msd import DATASET_FILE
from dsd_lab.cli import run_command

__all__ = ["make_brats", "make_mmwhs", "main"]

# Voxel-axis orientations seen in clinical exports; never RAS, so that loaders must reorient.
_ORIENTATIONS = (("L", "P", "S"), ("P", "L", "S"), ("L", "P", "I"), ("R", "P", "S"), ("L", "A", "S"))
_STRAY_CODE = 421

# name: (MM-WHS code, centre, semi-axes, HU). Geometry is in field-of-view units, RAS axes,
# relative to the heart centre. Drawn in this order, so later structures overwrite earlier ones.
# Real contrast-enhanced blood pools are brighter (300-450 HU) and alike; here every level sits
# inside the bundles' HU window [-175, 250] and apart from the others, so that the tiny models of
# the demo and the tests can learn the structures on a CPU in minutes.
_HEART = {
    "lv_myocardium": (205, (-0.23, -0.12, -0.14), (0.37, 0.33, 0.32), 100.0),
    "lv_blood_cavity": (500, (-0.23, -0.12, -0.14), (0.26, 0.21, 0.23), 225.0),
    "right_ventricle": (600, (0.19, 0.30, -0.11), (0.28, 0.16, 0.21), 165.0),
    "right_atrium": (550, (0.40, 0.02, 0.14), (0.21, 0.21, 0.18), 140.0),
    "left_atrium": (420, (-0.09, -0.42, 0.21), (0.28, 0.16, 0.14), 205.0),
    "pulmonary_artery": (850, (-0.14, 0.28, 0.38), (0.14, 0.14, 0.25), 185.0),
    "ascending_aorta": (820, (0.06, -0.09, 0.40), (0.14, 0.14, 0.28), 245.0),
}
_AIR_HU, _BODY_HU, _LUNG_HU, _BONE_HU = -1000.0, 40.0, -820.0, 650.0
_BLOOD_HU = 120.0  # structures above this are contrast-enhanced blood pools
_HEART_SCALE = 1.3
_NOISE_HU = 10.0


def _affine(orientation: Sequence[str], spacing: np.ndarray, shape: Sequence[int], centre: np.ndarray) -> np.ndarray:
    ornt = nib.orientations.axcodes2ornt(orientation)
    affine = np.eye(4)
    for axis, (world_axis, flip) in enumerate(ornt):
        affine[:3, axis] = 0.0
        affine[int(world_axis), axis] = flip * spacing[axis]
    # Put the volume centre at `centre` in world coordinates.
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def _fov_coords(affine: np.ndarray, shape: Sequence[int], half_extent: np.ndarray) -> list[np.ndarray]:
    """Per world axis (R, A, S), broadcastable arrays of voxel positions in [-1, 1] field-of-view units."""
    coords = [np.zeros((1, 1, 1), np.float32) for _ in range(3)]
    for axis, n in enumerate(shape):
        world_axis = int(np.argmax(np.abs(affine[:3, axis])))
        steps = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * affine[world_axis, axis]
        view = [1, 1, 1]
        view[axis] = n
        coords[world_axis] = (steps / half_extent[world_axis]).reshape(view)
    return coords


def _ellipsoid(coords: Sequence[np.ndarray], centre: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    return sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, semi_axes)) <= 1.0


def _mmwhs_case(
    rng: np.random.Generator, shape: Sequence[int] | None, stray: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    orientation = _ORIENTATIONS[rng.integers(len(_ORIENTATIONS))]
    in_plane, slice_ = rng.uniform(0.9, 1.2), rng.uniform(1.6, 2.5)
    spacing = np.array([in_plane, in_plane, slice_])  # voxel axes; the slice axis is always last
    if shape is None:
        # Half field of view in mm per voxel axis: ~48-64 voxels per axis at 1.5 x 1.5 x 2.0 mm.
        half_mm = np.array([rng.uniform(37, 45), rng.uniform(37, 45), rng.uniform(48, 60)])
        shape = [int(round(2 * h / s)) for h, s in zip(half_mm, spacing)]
        # Sizes that divide by 16 would hide missing padding/cropping in the pipelines under test.
        shape = [n + 1 if n % 16 == 0 else n for n in shape]
    shape = tuple(int(n) for n in shape)
    affine = _affine(orientation, spacing, shape, centre=rng.uniform(-60, 60, size=3))
    half_extent = np.abs(affine[:3, :3]) @ (np.asarray(shape) / 2.0)  # per world axis
    x, y, z = _fov_coords(affine, shape, half_extent)

    full = np.broadcast_shapes(x.shape, y.shape, z.shape)
    image = np.full(full, _AIR_HU, np.float32)
    label = np.zeros(full, np.uint16)
    body_y = -0.05
    body = np.broadcast_to((x / 0.9) ** 2 + ((y - body_y) / 0.78) ** 2 <= 1.0, full)
    image[body] = _BODY_HU
    for side in (-1, 1):
        image[body & _ellipsoid((x, y, z), (side * 0.55, -0.1, 0.0), (0.33, 0.5, 1.6))] = _LUNG_HU
    image[body & _ellipsoid((x, y, z), (0.0, -0.66, 0.0), (0.13, 0.12, 10.0))] = _BONE_HU

    # Heart pose: shared jitter keeps the anatomical arrangement, per-structure jitter varies shapes.
    heart_centre = np.array([0.05, 0.1, 0.0]) + rng.uniform(-0.06, 0.06, size=3)
    angle = np.deg2rad(rng.uniform(-12, 12))
    dx, dy = x - heart_centre[0], y - heart_centre[1]
    hx, hy = np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy
    heart_coords = (hx, hy, z - heart_centre[2])
    scale = _HEART_SCALE * rng.uniform(0.9, 1.1)
    lv_jitter = rng.uniform(-0.02, 0.02, size=3)
    contrast = rng.normal(0.0, 8.0)  # bolus timing shifts every enhanced structure together
    for code, centre, semi_axes, hu in _HEART.values():
        # The myocardium must stay a shell around the LV cavity, so they share one jitter.
        jitter = lv_jitter if code in (205, 500) else rng.uniform(-0.03, 0.03, size=3)
        size = scale * (1.0 if code in (205, 500) else rng.uniform(0.92, 1.08))
        mask = _ellipsoid(heart_coords, np.asarray(centre) * scale + jitter, np.asarray(semi_axes) * size)
        label[mask] = code
        image[mask] = hu + (contrast if hu > _BLOOD_HU else 0.0) + rng.normal(0.0, 3.0)

    if stray:
        # Mimic the few stray 421 voxels of the released labels, placed inside the left atrium (420).
        candidates = np.flatnonzero(label == 420)
        picks = rng.choice(candidates, size=min(len(candidates), int(rng.integers(3, 12))), replace=False)
        label.flat[picks] = _STRAY_CODE

    image = gaussian_filter(image, sigma=0.6) + rng.normal(0.0, _NOISE_HU, size=full).astype(np.float32)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return image, label, affine


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # scanner coordinates, as in clinical exports
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def _check_args(cases: int, seed: int, shape: Sequence[int] | None) -> None:
    if int(cases) != cases or cases < 1:
        raise ValueError(f"cases must be a positive integer, got {cases!r}.")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if shape is not None and (len(shape) != 3 or any(int(n) != n or n < 8 for n in shape)):
        raise ValueError(f"shape must be three integers >= 8, got {shape!r}.")


def make_mmwhs(
    out_dir: str | os.PathLike, cases: int = 10, seed: int = 0, shape: Sequence[int] | None = None
) -> list[str]:
    """Write a synthetic CT dataset in the MM-WHS 2017 layout.

    Each case is an int16 CT volume in HU (air, body, lungs, spine and seven contrast-enhanced
    heart structures with their own HU levels, blurred and with Gaussian noise) and a uint16
    label volume with the seven MM-WHS codes plus background. Even-numbered cases (0-based)
    also hold a few voxels of the stray code 421. Volumes have non-RAS orientations, anisotropic
    spacing and sizes that are not multiples of 16, all varying per case.

    Case ``i`` depends only on ``(seed, i)``, so more cases extend a dataset without changing it.

    Args:
        out_dir: output folder, created if missing.
        cases: number of cases, written as ``ct_train_1001_*``, ``ct_train_1002_*``, ...
        seed: random seed.
        shape: optional voxel shape ``(i, j, slices)`` for every case, instead of a random one.

    Returns:
        the written paths, image then label for each case.

    Raises:
        FileExistsError: if ``out_dir`` already holds a ``ct_train_*`` file; nothing is written.
        ValueError: if ``cases``, ``seed`` or ``shape`` is invalid.
    """
    _check_args(cases, seed, shape)
    out = Path(out_dir).expanduser()
    if out.is_dir():
        existing = sorted(out.glob("ct_train_*"))
        if existing:
            raise FileExistsError(f"Refusing to overwrite: {existing[0]} already exists in {out}.")
    out.mkdir(parents=True, exist_ok=True)

    paths = []
    for i in range(int(cases)):
        rng = np.random.default_rng([int(seed), i])
        image, label, affine = _mmwhs_case(rng, shape, stray=i % 2 == 0)
        missing = set(MMWHS_LABEL_CODES) - set(np.unique(label).tolist())
        if missing:  # guards the geometry table above against edits that hide a structure
            raise RuntimeError(f"Synthetic case {i} lost label code(s) {sorted(missing)}; check shape={shape}.")
        for kind, data in (("image", image), ("label", label)):
            path = out / f"ct_train_{1001 + i}_{kind}.nii.gz"
            _save(data, affine, path)
            paths.append(str(path))
    print(f"Wrote {cases} synthetic MM-WHS case(s) (seed {seed}) to {out}")
    return paths


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
    affine = _affine(_BRATS_ORIENTATION, np.ones(3), shape, centre=rng.uniform(-20, 20, size=3))
    half_extent = np.abs(affine[:3, :3]) @ (np.asarray(shape) / 2.0)
    coords = _fov_coords(affine, shape, half_extent)
    full = np.broadcast_shapes(*(c.shape for c in coords))

    tissue = np.zeros(full, np.uint8)  # index into _BRATS_TISSUE + 1; 0 is outside the skull-stripped brain
    brain = _ellipsoid(coords, rng.uniform(-0.03, 0.03, size=3), rng.uniform(0.78, 0.88, size=3))
    tissue[brain] = 1
    for side in (-1, 1):
        ventricle = _ellipsoid(coords, (side * 0.12, 0.05, 0.05), (0.07, 0.25, 0.15))
        tissue[ventricle & brain] = 2

    # The tumour: an edema ellipsoid around a core whose outer shell enhances and whose inside does not.
    centre = rng.uniform(-0.3, 0.3, size=3)
    edema_axes = rng.uniform(0.35, 0.45, size=3)
    core_axes = edema_axes * rng.uniform(0.6, 0.72)
    core = _ellipsoid(coords, centre, core_axes) & brain
    inner = _ellipsoid(coords, centre, core_axes * rng.uniform(0.5, 0.62)) if enhancing else core
    label = np.zeros(full, np.uint8)
    label[_ellipsoid(coords, centre, edema_axes) & brain] = 1
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
    _check_args(cases, seed, shape)
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
        rng = np.random.default_rng([int(seed), i])
        image, label, affine = _brats_case(rng, shape, enhancing=i % 4 != 3)
        expected = {0, 1, 2, 3} if i % 4 != 3 else {0, 1, 2}
        if set(np.unique(label).tolist()) != expected:  # guards the geometry above against edits
            raise RuntimeError(f"Synthetic case {i} has labels {np.unique(label).tolist()}, expected {expected}.")
        name = f"BRATS_{i + 1:03d}.nii.gz"
        labelled = i < cases
        files = [("imagesTr" if labelled else "imagesTs", image)] + ([("labelsTr", label)] if labelled else [])
        for folder, data in files:
            _save(data, affine, out / folder / name)
            (out / folder / f"._{name}").write_bytes(_APPLE_DOUBLE)
            paths.append(str(out / folder / name))
        if labelled:
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")

    order = np.random.default_rng(int(seed)).permutation(len(training))  # MSD lists cases unsorted
    description = {
        "name": "BRATS",
        "description": "Synthetic gliomas in the layout of MSD Task01_BrainTumour (monai-dsd test data)",
        "tensorImageSize": "4D",
        "modality": {str(i): name for i, name in enumerate(BRATS_MODALITIES)},
        "labels": {str(i): name for i, name in enumerate(BRATS_LABEL_NAMES)},
        "numTraining": int(cases),
        "numTest": int(test_cases),
        "training": [training[j] for j in order],
        "test": test,
    }
    (out / DATASET_FILE).write_text(json.dumps(description, indent=4) + "\n")
    print(f"Wrote {cases} + {test_cases} synthetic MSD BraTS case(s) (seed {seed}) to {out}")
    return paths


def main(argv: list[str] | None = None) -> None:
    """``dsd-synthetic``: one sub-command per dataset; the summary line is printed, not every written path."""
    run_command({"mmwhs": make_mmwhs, "brats": make_brats}, argv, name="dsd-synthetic")


if __name__ == "__main__":
    main()
