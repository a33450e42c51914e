"""Dictionary transforms for validating and mapping segmentation labels."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from custom.definitions import MMWHS_BACKGROUND_CODES, MMWHS_LABEL_CODES

__all__ = ["MapLabelCodesd", "CheckFinited", "LabelsToRegionsd", "mmwhs_label_transform"]

# Label files stored as float may carry rounding noise from scl_slope/scl_inter scaling.
_CODE_TOLERANCE = 1e-3
_MAX_REPORTED = 10


def _source_name(img: NdarrayOrTensor, key: Hashable) -> str:
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else f"key '{key}'"


def _format_code(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


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
        values = torch.unique(label)
        # Compare in float64: exact for every int16/uint16/int32 code and for float32 labels.
        rounded = torch.round(values.double())
        known = (values.double() - rounded).abs() <= _CODE_TOLERANCE
        known &= torch.isin(rounded, torch.tensor(list(self.lookup), dtype=torch.float64, device=rounded.device))
        if not bool(known.all()):
            bad = values[~known].double().tolist()
            # A float label with interpolation noise can hold thousands of distinct values.
            unknown = ", ".join(_format_code(v) for v in bad[:_MAX_REPORTED])
            if len(bad) > _MAX_REPORTED:
                unknown += f", ... ({len(bad)} distinct values)"
            raise ValueError(
                f"Unknown label code(s) {unknown} in {_source_name(img, key)}; "
                f"expected one of {sorted(self.lookup)}."
            )
        # PyTorch lacks masked_fill for uint16/32/64; build in int32 and cast back on return.
        unsigned = (torch.uint16, torch.uint32, torch.uint64)
        out = torch.zeros_like(label, dtype=torch.int32 if label.dtype in unsigned else label.dtype)
        # One pass per distinct code present (at most a handful), not per voxel.
        for value, code in zip(values, rounded.long().tolist()):
            index = self.lookup[code]
            if index:
                out[label == value] = index
        mapped, *_ = convert_to_dst_type(out, img)
        return mapped

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """
        Raises:
            ValueError: if a label holds a value that is neither a class code nor a background
                code; the message names the file (or the key) and the unknown values.
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
            ValueError: if a keyed image has a NaN or infinite voxel; the message names the file
                (or the key) and the number of such voxels.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            img = convert_to_tensor(d[key], track_meta=False)
            bad = int((~torch.isfinite(img)).sum()) if img.is_floating_point() else 0
            if bad:
                raise ValueError(f"{bad} NaN/Inf voxel(s) in {_source_name(d[key], key)}.")
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
            raise ValueError(
                f"LabelsToRegionsd expects a channel-first label map with one channel, got shape "
                f"{tuple(label.shape)} in {_source_name(img, key)}."
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
            ValueError: if a keyed label map does not have exactly one channel; the message names the file.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._convert(d[key], key)
        return d
