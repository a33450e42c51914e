"""A synthetic CT dataset in the MM-WHS 2017 layout: seven heart structures with their MM-WHS label codes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from custom.definitions import MMWHS_LABEL_CODES
from custom.mmwhs import UNLABELLED_FOLDER
from dsd_lab.data.volumes import affine_matrix, check_synthetic_args, ellipsoid, fov_coords, save_nifti

__all__ = ["make_mmwhs"]

# Voxel-axis orientations seen in clinical exports; never RAS, so that loaders must reorient.
_ORIENTATIONS = (("L", "P", "S"), ("P", "L", "S"), ("L", "P", "I"), ("R", "P", "S"), ("L", "A", "S"))
_STRAY_CODE = 421

# name: (MM-WHS code, centre, semi-axes, HU). Geometry is in field-of-view units, RAS axes,
# relative to the heart centre. Drawn in this order, so later structures overwrite earlier ones.
# Real contrast-enhanced blood pools are brighter (300-450 HU) and alike; here every level sits
# inside the bundles' HU window [-175, 250], 23 HU or more from every other (about four times the
# noise) and 46 HU or more from the structures it touches (but for the right atrium and ventricle,
# the largest ones), and the atria and great vessels are drawn
# large enough to hold a few thousand voxels at the bundles' spacing, so that the tiny models of the
# demo and the tests learn every structure, the small ones too, on a CPU in minutes.
_HEART = {
    "lv_myocardium": (205, (-0.23, -0.12, -0.14), (0.37, 0.33, 0.32), 85.0),
    "lv_blood_cavity": (500, (-0.23, -0.12, -0.14), (0.26, 0.21, 0.23), 227.0),
    "right_ventricle": (600, (0.19, 0.30, -0.11), (0.29, 0.19, 0.22), 204.0),
    "right_atrium": (550, (0.40, 0.02, 0.14), (0.23, 0.23, 0.21), 180.0),
    "left_atrium": (420, (-0.09, -0.42, 0.21), (0.30, 0.20, 0.18), 130.0),
    "pulmonary_artery": (850, (-0.14, 0.28, 0.38), (0.19, 0.19, 0.28), 155.0),
    "ascending_aorta": (820, (0.06, -0.09, 0.40), (0.17, 0.17, 0.29), 250.0),
}
_AIR_HU, _BODY_HU, _LUNG_HU, _BONE_HU = -1000.0, 40.0, -820.0, 650.0
_BLOOD_HU = 120.0  # structures above this are contrast-enhanced blood pools
_HEART_SCALE = 1.4
_NOISE_HU = 6.0
_UNLABELLED_STREAM = 1  # third word of the unlabelled scans' seeds; labelled cases use two


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
    affine = affine_matrix(orientation, spacing, shape, centre=rng.uniform(-60, 60, size=3))
    half_extent = np.abs(affine[:3, :3]) @ (np.asarray(shape) / 2.0)  # per world axis
    x, y, z = fov_coords(affine, shape, half_extent)

    full = np.broadcast_shapes(x.shape, y.shape, z.shape)
    image = np.full(full, _AIR_HU, np.float32)
    label = np.zeros(full, np.uint16)
    body_y = -0.05
    body = np.broadcast_to((x / 0.9) ** 2 + ((y - body_y) / 0.78) ** 2 <= 1.0, full)
    image[body] = _BODY_HU
    for side in (-1, 1):
        image[body & ellipsoid((x, y, z), (side * 0.55, -0.1, 0.0), (0.33, 0.5, 1.6))] = _LUNG_HU
    image[body & ellipsoid((x, y, z), (0.0, -0.66, 0.0), (0.13, 0.12, 10.0))] = _BONE_HU

    # Heart pose: shared jitter keeps the anatomical arrangement, per-structure jitter varies shapes.
    heart_centre = np.array([0.05, 0.1, 0.0]) + rng.uniform(-0.06, 0.06, size=3)
    angle = np.deg2rad(rng.uniform(-12, 12))
    dx, dy = x - heart_centre[0], y - heart_centre[1]
    hx, hy = np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy
    heart_coords = (hx, hy, z - heart_centre[2])
    scale = _HEART_SCALE * rng.uniform(0.9, 1.1)
    lv_jitter = rng.uniform(-0.02, 0.02, size=3)
    contrast = rng.normal(0.0, 4.0)  # bolus timing shifts every enhanced structure together
    for code, centre, semi_axes, hu in _HEART.values():
        # The myocardium must stay a shell around the LV cavity, so they share one jitter.
        jitter = lv_jitter if code in (205, 500) else rng.uniform(-0.03, 0.03, size=3)
        size = scale * (1.0 if code in (205, 500) else rng.uniform(0.92, 1.08))
        mask = ellipsoid(heart_coords, np.asarray(centre) * scale + jitter, np.asarray(semi_axes) * size)
        label[mask] = code
        image[mask] = hu + (contrast if hu > _BLOOD_HU else 0.0) + rng.normal(0.0, 2.0)

    if stray:
        # Mimic the few stray 421 voxels of the released labels, placed inside the left atrium (420).
        candidates = np.flatnonzero(label == 420)
        picks = rng.choice(candidates, size=min(len(candidates), int(rng.integers(3, 12))), replace=False)
        label.flat[picks] = _STRAY_CODE

    image = gaussian_filter(image, sigma=0.6) + rng.normal(0.0, _NOISE_HU, size=full).astype(np.float32)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return image, label, affine


def make_mmwhs(
    out_dir: str | os.PathLike,
    cases: int = 10,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    test_cases: int = 0,
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
        test_cases: number of unlabelled scans, written as ``ct_test_2001_image.nii.gz``, ... into the folder
            ``ct_test`` beside ``out_dir``, as the MM-WHS release lays out ``ct_train/`` and ``ct_test/``. Scan
            ``i`` depends only on ``(seed, i)`` and differs from every labelled case.

    Returns:
        the written paths, image then label for each case, then the unlabelled scans.

    Raises:
        FileExistsError: if ``out_dir`` already holds a ``ct_train_*`` file, or the unlabelled folder a
            ``ct_test_*`` file; nothing is written.
        ValueError: if ``cases``, ``seed``, ``shape`` or ``test_cases`` is invalid.
    """
    check_synthetic_args(cases, seed, shape)
    if int(test_cases) != test_cases or test_cases < 0:
        raise ValueError(f"test_cases must be a non-negative integer, got {test_cases!r}.")
    out = Path(out_dir).expanduser()
    test_dir = out.resolve().parent / UNLABELLED_FOLDER
    targets = [(out, "ct_train_*")] + ([(test_dir, "ct_test_*")] if test_cases else [])
    for folder, pattern in targets:
        existing = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if existing:
            raise FileExistsError(f"Refusing to overwrite: {existing[0]} already exists in {folder}.")
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
            save_nifti(data, affine, path)
            paths.append(str(path))
    print(f"Wrote {cases} synthetic MM-WHS case(s) (seed {seed}) to {out}")
    if test_cases:
        test_dir.mkdir(parents=True, exist_ok=True)
        for i in range(int(test_cases)):
            # A stream of its own per scan, so that no scan repeats a labelled case.
            image, _, affine = _mmwhs_case(np.random.default_rng([int(seed), i, _UNLABELLED_STREAM]), shape, stray=False)
            path = test_dir / f"ct_test_{2001 + i}_image.nii.gz"
            save_nifti(image, affine, path)
            paths.append(str(path))
        print(f"Wrote {test_cases} unlabelled synthetic MM-WHS scan(s) to {test_dir}")
    return paths
