"""Transforms that read images naming the file on failure, validate and map segmentation labels, and refuse
non-finite voxels; with the counts they rest on, which the dataset check (``dsd-check-data``) reports too."""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Hashable, Iterable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import ImageReader
from monai.transforms import LoadImage, LoadImaged, MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from custom.definitions import MMWHS_BACKGROUND_CODES, MMWHS_LABEL_CODES
from custom.errors import LABEL_CODES, NON_FINITE, SHAPE, UNREADABLE, DataError, DataProblem

__all__ = [
    "CheckFinited",
    "LabelsToRegionsd",
    "LoadImageNamed",
    "LoadImageNamedd",
    "MapLabelCodesd",
    "label_code_counts",
    "mmwhs_label_transform",
    "nonfinite_count",
    "unknown_codes",
]

# Label files stored as float may carry rounding noise from scl_slope/scl_inter scaling.
_CODE_TOLERANCE = 1e-3
_MAX_REPORTED = 10


def _source_name(img: NdarrayOrTensor, key: Hashable) -> str:
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else f"key '{key}'"


def _format_code(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _error(file: str, fault: str, detail: str) -> DataError:
    problem = DataProblem(file, fault, detail)
    return DataError(problem.describe(), problem)


def _unreadable(filename, error: Exception) -> DataError:
    names = [filename] if isinstance(filename, (str, bytes)) or not isinstance(filename, Sequence) else filename
    file = ", ".join(str(name) for name in names)
    reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if isinstance(error, (EOFError, zlib.error, gzip.BadGzipFile)):
        reason = f"the file is truncated or its compressed data is corrupt, as after a broken download ({reason})"
    return _error(file, UNREADABLE, f"cannot read the image: {reason}")


class LoadImageNamed(LoadImage):
    """MONAI's ``LoadImage`` whose read and decode failures name the file and the reason.

    Decoding happens after the header is read: a truncated ``.nii.gz`` passes every header check and fails only
    here, with ``EOFError: Compressed file ended before the end-of-stream marker was reached`` and no file name.
    Arguments are MONAI's.
    """

    def __call__(self, filename, reader: ImageReader | None = None):
        """
        Raises:
            DataError: the file cannot be read or decoded; the message names it and the reason.
        """
        try:
            return super().__call__(filename, reader)
        except Exception as error:
            raise _unreadable(filename, error) from error


class LoadImageNamedd(LoadImaged):
    """MONAI's ``LoadImaged`` whose read and decode failures name the file and the reason (see
    :class:`LoadImageNamed`). Arguments are MONAI's; ``image_only`` must be true, as the bundles use it.

    Raises:
        ValueError: at construction, ``image_only=False``.
    """

    def __init__(self, keys: KeysCollection, *args, **kwargs) -> None:
        super().__init__(keys, *args, **kwargs)
        if not self._loader.image_only:
            raise ValueError("LoadImageNamedd loads images only (image_only=True); MONAI's LoadImaged also metadata.")

    def __call__(self, data, reader: ImageReader | None = None):
        """
        Raises:
            DataError: a keyed file cannot be read or decoded; the message names it and the reason.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self._loader(d[key], reader)
            except Exception as error:
                raise _unreadable(d[key], error) from error
        return d


def nonfinite_count(img: NdarrayOrTensor) -> int:
    """The number of NaN and infinite voxels of ``img`` (0 for integer images)."""
    img = convert_to_tensor(img, track_meta=False)
    return int((~torch.isfinite(img)).sum()) if img.is_floating_point() else 0


def label_code_counts(label: NdarrayOrTensor) -> dict[float, int]:
    """Every value of ``label`` and its number of voxels."""
    values, counts = torch.unique(convert_to_tensor(label, track_meta=False), return_counts=True)
    return dict(zip(values.double().tolist(), counts.tolist()))


def unknown_codes(counts: Mapping[float, int], known: Iterable[int]) -> dict[float, int]:
    """The values of :func:`label_code_counts` that are none of the ``known`` codes, with their voxel counts.

    Label files stored as float may carry rounding noise from ``scl_slope``/``scl_inter`` scaling, so a value
    within 1e-3 of a known code counts as that code.
    """
    known = {int(code) for code in known}

    def is_known(value: float) -> bool:
        return math.isfinite(value) and abs(value - round(value)) <= _CODE_TOLERANCE and round(value) in known

    return {value: count for value, count in counts.items() if not is_known(value)}


def _format_unknown(unknown: Mapping[float, int]) -> str:
    # A float label with interpolation noise can hold thousands of distinct values.
    shown = [f"{_format_code(v)} ({n} voxel{'s' if n != 1 else ''})" for v, n in list(unknown.items())[:_MAX_REPORTED]]
    if len(unknown) > _MAX_REPORTED:
        shown.append(f"... ({len(unknown)} distinct values)")
    return ", ".join(shown)


class MapLabelCodesd(MapTransform):
    """Map the raw codes of a label image to consecutive class indices.

    Every voxel value must be either a key of ``codes`` or one of ``background_codes``; anything
    else is treated as a corrupt label file rather than silently becoming background.

    Args:
        keys: keys of the label images to map.
        codes: source code -> class index, e.g. :data:`custom.definitions.MMWHS_LABEL_CODES`.
        background_codes: source codes mapped to class 0.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ValueError: at construction, if a code is both in ``codes`` and ``background_codes`` or a
            class index is negative.
    """

    def __init__(
        self,
        keys: KeysCollection,
        codes: Mapping[int, int],
        background_codes: Sequence[int] = (0,),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        overlap = set(codes) & set(background_codes)
        if overlap:
            raise ValueError(f"Codes {sorted(overlap)} are listed both as class codes and as background codes.")
        if any(int(c) < 0 for c in codes.values()):
            raise ValueError(f"Class indices must be non-negative, got {dict(codes)}.")
        self.lookup: dict[int, int] = {int(b): 0 for b in background_codes}
        self.lookup.update({int(k): int(v) for k, v in codes.items()})

    def _map(self, img: NdarrayOrTensor, key: Hashable) -> NdarrayOrTensor:
        label = convert_to_tensor(img, track_meta=False)
        counts = label_code_counts(label)
        unknown = unknown_codes(counts, self.lookup)
        if unknown:
            raise _error(
                _source_name(img, key),
                LABEL_CODES,
                f"unknown label code(s) {_format_unknown(unknown)}; expected one of {sorted(self.lookup)}",
            )
        values = torch.tensor(list(counts), dtype=torch.float64)
        rounded = torch.round(values)
        # PyTorch lacks masked_fill for uint16/32/64; build in int32 and cast back on return.
        unsigned = (torch.uint16, torch.uint32, torch.uint64)
        out = torch.zeros_like(label, dtype=torch.int32 if label.dtype in unsigned else label.dtype)
        # One pass per distinct code present (at most a handful), not per voxel.
        for value, code in zip(values.tolist(), rounded.long().tolist()):
            index = self.lookup[code]
            if index:
                out[label == value] = index
        mapped, *_ = convert_to_dst_type(out, img)
        return mapped

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """
        Raises:
            DataError: if a label holds a value that is neither a class code nor a background
                code; the message names the file (or the key), the unknown values and their voxel counts.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._map(d[key], key)
        return d


class CheckFinited(MapTransform):
    """Reject images holding NaN or infinite voxels, which would otherwise poison training silently.

    Args:
        keys: keys of the images to check.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """
        Raises:
            DataError: if a keyed image has a NaN or infinite voxel; the message names the file
                (or the key) and the number of such voxels.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            bad = nonfinite_count(d[key])
            if bad:
                raise _error(_source_name(d[key], key), NON_FINITE, f"{bad} NaN/Inf voxel(s)")
        return d


def mmwhs_label_transform(keys: KeysCollection = "label") -> MapLabelCodesd:
    """Return the transform mapping MM-WHS label codes to class indices 0..7.

    Args:
        keys: keys of the label images.

    Returns:
        a :class:`MapLabelCodesd` using :data:`custom.definitions.MMWHS_LABEL_CODES` and
        :data:`custom.definitions.MMWHS_BACKGROUND_CODES`.
    """
    return MapLabelCodesd(keys, codes=MMWHS_LABEL_CODES, background_codes=MMWHS_BACKGROUND_CODES)


class LabelsToRegionsd(MapTransform):
    """Turn a class-index label map into one binary channel per region, a region being a set of label values.

    Nested regions, such as the BraTS whole tumour, tumour core and enhancing tumour, overlap and so
    cannot be one-hot channels of a single label map. Unlike MONAI's
    ``ConvertToMultiChannelBasedOnBratsClassesd``, which hard-codes the BraTS 2018 codes (1, 2, 4),
    the label values of each region are given, e.g. ``custom.definitions.BRATS_REGIONS`` for the MSD coding.

    Args:
        keys: keys of the single-channel label maps to convert.
        regions: the label values of each output channel, e.g. ``[[1, 2, 3], [2, 3], [3]]``.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ValueError: at construction, if there is no region or a region holds no label value.
    """

    def __init__(
        self, keys: KeysCollection, regions: Sequence[Sequence[int]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.regions = [tuple(int(v) for v in region) for region in regions]
        if not self.regions or not all(self.regions):
            raise ValueError(f"Each of at least one region needs a label value, got {regions!r}.")

    def _convert(self, img: NdarrayOrTensor, key: Hashable) -> NdarrayOrTensor:
        label = convert_to_tensor(img, track_meta=False)
        if label.ndim < 2 or label.shape[0] != 1:
            raise _error(
                _source_name(img, key),
                SHAPE,
                f"LabelsToRegionsd expects a channel-first label map with one channel, got shape {tuple(label.shape)}",
            )
        channels = [
            torch.isin(label[0], torch.as_tensor(region, dtype=label.dtype, device=label.device))
            for region in self.regions
        ]
        regions, *_ = convert_to_dst_type(torch.stack(channels), img, dtype=label.dtype)
        return regions

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """
        Raises:
            DataError: if a keyed label map does not have exactly one channel; the message names the file.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._convert(d[key], key)
        return d
