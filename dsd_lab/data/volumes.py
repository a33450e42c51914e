"""What the synthetic datasets share: voxel grids in world space, simple shapes, NIfTI files as scanners write them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["affine_matrix", "check_synthetic_args", "ellipsoid", "fov_coords", "save_nifti"]


def affine_matrix(
    orientation: Sequence[str], spacing: np.ndarray, shape: Sequence[int], centre: np.ndarray
) -> np.ndarray:
    """The affine of ``shape`` voxels with axis codes ``orientation`` and ``spacing``, centred at ``centre``."""
    ornt = nib.orientations.axcodes2ornt(orientation)
    affine = np.eye(4)
    for axis, (world_axis, flip) in enumerate(ornt):
        affine[:3, axis] = 0.0
        affine[int(world_axis), axis] = flip * spacing[axis]
    # Put the volume centre at `centre` in world coordinates.
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def fov_coords(affine: np.ndarray, shape: Sequence[int], half_extent: np.ndarray) -> list[np.ndarray]:
    """Per world axis (R, A, S), broadcastable arrays of voxel positions in [-1, 1] field-of-view units."""
    coords = [np.zeros((1, 1, 1), np.float32) for _ in range(3)]
    for axis, n in enumerate(shape):
        world_axis = int(np.argmax(np.abs(affine[:3, axis])))
        steps = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * affine[world_axis, axis]
        view = [1, 1, 1]
        view[axis] = n
        coords[world_axis] = (steps / half_extent[world_axis]).reshape(view)
    return coords


def ellipsoid(coords: Sequence[np.ndarray], centre: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    """The voxels inside an axis-aligned ellipsoid, in the units of ``coords``."""
    return sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, semi_axes)) <= 1.0


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``data`` with ``affine`` as qform and sform in scanner coordinates, millimetres, as clinical exports do."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # scanner coordinates, as in clinical exports
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def check_synthetic_args(cases: int, seed: int, shape: Sequence[int] | None) -> None:
    """Refuse a non-positive number of cases, a negative seed or a shape that is not three integers >= 8."""
    if int(cases) != cases or cases < 1:
        raise ValueError(f"cases must be a positive integer, got {cases!r}.")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if shape is not None and (len(shape) != 3 or any(int(n) != n or n < 8 for n in shape)):
        raise ValueError(f"shape must be three integers >= 8, got {shape!r}.")
