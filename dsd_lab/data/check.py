"""``dsd-check-data``: read every volume of a bundle's dataset once, before a long run, and report every problem at once.

Usage::

    dsd-check-data BUNDLE_DIR --dataset_dir DATA [--any_config_id value ...]

The bundle says what its data must be: its ``dataset_cases`` config id lists the cases with the runtime's own reader
(``custom.mmwhs`` or ``custom.msd``, header checks included), ``in_channels`` gives the channels, and the
``custom.transforms.MapLabelCodesd`` of ``train#deterministic_transforms`` the label codes. Every listed file is
then read in full with the runtime's loader. Problems are printed as one table (file, fault, detail) and the command
exits with code 1; a clean dataset gets a one-screen summary and exit code 0. Outliers of spacing and intensity are
warnings, shown with the dataset's median. Nothing is written, neither into the dataset nor into the bundle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from custom.errors import (
    DUPLICATE,
    EMPTY_LABEL,
    LABEL_CODES,
    NON_FINITE,
    UNREADABLE,
    DataError,
    DataProblem,
    collecting_problems,
)
from custom.flags import as_flag
from custom.transforms import LoadImageNamed, MapLabelCodesd, label_code_counts, nonfinite_count, unknown_codes
from dsd_lab.bundles import bundle_config
from dsd_lab.cli import run_command

__all__ = ["DatasetReport", "OUTLIER_FACTOR", "check_data", "check_dataset", "format_problems", "format_summary", "main"]

#: A case whose spacing along an axis, or whose intensity span in a channel, is this many times the dataset's median
#: or more (or as small as its inverse) is reported as a warning.
OUTLIER_FACTOR = 3.0
#: Fewest volumes for a median worth comparing with.
_MIN_VOLUMES_FOR_OUTLIERS = 3
SPACING_OUTLIER = "spacing outlier"
INTENSITY_OUTLIER = "intensity outlier"


@dataclass
class Volume:
    """What was read of one image file."""

    file: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    ranges: list[tuple[float, float]]  # per channel, finite voxels only


@dataclass
class DatasetReport:
    """What ``dsd-check-data`` found.

    Attributes:
        dataset_dir: the checked dataset.
        cases: the listed cases that could be read.
        problems: errors and warnings, errors first, each in the order found.
        images: what was read of each image.
        label_codes: code -> class index, from the bundle.
        code_voxels: label code -> voxels over all labels.
        code_cases: label code -> labels holding it.
    """

    dataset_dir: str
    cases: list[dict] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)
    images: list[Volume] = field(default_factory=list)
    label_codes: dict[int, int] = field(default_factory=dict)
    code_voxels: dict[float, int] = field(default_factory=dict)
    code_cases: dict[float, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[DataProblem]:
        return [p for p in self.problems if not p.warning]

    @property
    def warnings(self) -> list[DataProblem]:
        return [p for p in self.problems if p.warning]


def _label_codes(parser) -> dict[int, int]:
    # Only the label mapping is built: the bundle's other transforms are not needed to read the files.
    transforms = "train#deterministic_transforms"
    for index, item in enumerate(parser[transforms]):
        if isinstance(item, dict) and str(item.get("_target_", "")).endswith(MapLabelCodesd.__name__):
            transform = parser.get_parsed_content(f"{transforms}#{index}")
            if isinstance(transform, MapLabelCodesd) and "label" in transform.keys:
                return dict(transform.lookup)
    raise ValueError("The bundle's train#deterministic_transforms map no label codes (custom.transforms.MapLabelCodesd).")


def _read(loader: LoadImageNamed, file: str, problems: list[DataProblem]) -> torch.Tensor | None:
    try:
        return loader(file)
    except DataError as error:
        problems.append(error.problem or DataProblem(file, UNREADABLE, str(error)))
        return None


def _image_volume(file: str, image, problems: list[DataProblem]) -> tuple[Volume, str]:
    bad = nonfinite_count(image)
    if bad:
        problems.append(DataProblem(file, NON_FINITE, f"{bad} NaN/Inf voxel(s) in the image"))
    array = image.detach().cpu().as_tensor() if hasattr(image, "as_tensor") else image.detach().cpu()
    ranges = []
    for channel in array.reshape(array.shape[0], -1):
        finite = channel[torch.isfinite(channel)] if bad else channel
        ranges.append(tuple(float(x) for x in torch.aminmax(finite)) if finite.numel() else (float("nan"),) * 2)
    affine = np.asarray(image.affine, dtype=np.float64)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    digest = hashlib.blake2b(str(tuple(array.shape)).encode() + array.numpy().tobytes(), digest_size=16).hexdigest()
    return Volume(file, tuple(int(n) for n in array.shape[1:]), spacing, ranges), digest


def _check_label(file: str, label, codes: Mapping[int, int], report: DatasetReport, problems: list) -> None:
    bad = nonfinite_count(label)
    if bad:
        problems.append(DataProblem(file, NON_FINITE, f"{bad} NaN/Inf voxel(s) in the label"))
    counts = label_code_counts(label)
    unknown = unknown_codes(counts, codes)
    if unknown:
        listed = ", ".join(f"{value:g} ({count} voxels)" for value, count in list(unknown.items())[:10])
        more = f", ... ({len(unknown)} distinct values)" if len(unknown) > 10 else ""
        problems.append(DataProblem(file, LABEL_CODES, f"codes {listed}{more}; the dataset's codes are {sorted(codes)}"))
    foreground = [v for v in counts if v not in unknown and codes.get(round(v), 0) > 0]
    if not foreground:
        problems.append(DataProblem(file, EMPTY_LABEL, "no voxel of any class: the label is all background"))
    for value, count in counts.items():
        if value not in unknown:
            code = float(round(value))
            report.code_voxels[code] = report.code_voxels.get(code, 0) + count
            report.code_cases[code] = report.code_cases.get(code, 0) + 1


def _outliers(images: Sequence[Volume]) -> list[DataProblem]:
    if len(images) < _MIN_VOLUMES_FOR_OUTLIERS:
        return []

    def far(value: float, median: float) -> bool:
        return median > 0 and not median / OUTLIER_FACTOR < value < median * OUTLIER_FACTOR

    warnings = []
    spacing_median = np.median([v.spacing for v in images], axis=0)
    for volume in images:
        if any(far(s, m) for s, m in zip(volume.spacing, spacing_median)):
            warnings.append(
                DataProblem(
                    volume.file,
                    SPACING_OUTLIER,
                    f"voxel spacing {_triple(volume.spacing)} mm; the dataset's median is {_triple(spacing_median)} mm",
                    warning=True,
                )
            )
    channels = min(len(v.ranges) for v in images)
    for channel in range(channels):
        spans = [v.ranges[channel][1] - v.ranges[channel][0] for v in images]
        median_range = np.nanmedian([v.ranges[channel] for v in images], axis=0)
        median_span = float(np.nanmedian(spans))
        for volume, span in zip(images, spans):
            if far(span, median_span):
                low, high = volume.ranges[channel]
                where = f" of channel {channel}" if channels > 1 else ""
                warnings.append(
                    DataProblem(
                        volume.file,
                        INTENSITY_OUTLIER,
                        f"intensities{where} in [{low:g}, {high:g}]; the dataset's median range is "
                        f"[{median_range[0]:g}, {median_range[1]:g}]",
                        warning=True,
                    )
                )
    return warnings


def _triple(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):.3g}" for v in values)


def check_dataset(
    bundle_dir: str | Path, dataset_dir: str | Path, progress: bool = True, **overrides: Any
) -> DatasetReport:
    """Check a dataset as the bundle reads it: list and header-check its cases, then read every file in full.

    Args:
        bundle_dir: the bundle root; its ``train.json`` defines ``dataset_cases``, ``in_channels`` and the label codes.
        dataset_dir: the dataset, as the bundle's ``--dataset_dir``.
        progress: show a progress bar while reading.
        overrides: other config ids and values, e.g. ``in_channels``.

    Returns:
        the problems found and the dataset's statistics.
    """
    parser = bundle_config(bundle_dir)
    parser["dataset_dir"] = str(dataset_dir)
    for key, value in overrides.items():
        parser[key] = value
    report = DatasetReport(str(dataset_dir), label_codes=_label_codes(parser))
    with collecting_problems() as problems:
        report.cases = list(parser.get_parsed_content("dataset_cases"))
    loader = LoadImageNamed(image_only=True, ensure_channel_first=True)
    first_seen: dict[str, str] = {}
    for case in tqdm(report.cases, desc="Reading volumes", unit="case", disable=not progress):
        image = _read(loader, case["image"], problems)
        if image is not None:
            volume, digest = _image_volume(str(case["image"]), image, problems)
            report.images.append(volume)
            if digest in first_seen:
                problems.append(DataProblem(volume.file, DUPLICATE, f"the same voxels as {first_seen[digest]}"))
            first_seen.setdefault(digest, volume.file)
        if "label" in case:
            label = _read(loader, case["label"], problems)
            if label is not None:
                _check_label(str(case["label"]), label, report.label_codes, report, problems)
    report.problems = [p for p in problems if not p.warning] + _outliers(report.images)
    return report


def _relative(file: str, root: Path) -> str:
    try:
        return str(Path(file).resolve().relative_to(root))
    except ValueError:
        return file


def format_problems(report: DatasetReport) -> str:
    """The problems as a plain-text table: file (relative to the dataset folder), fault, detail."""
    root = Path(report.dataset_dir).expanduser().resolve()
    root = root if root.is_dir() else root.parent
    rows = [("file", "fault", "detail")]
    rows += [(_relative(p.file, root), ("warning: " if p.warning else "") + p.fault, p.detail) for p in report.problems]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}" for row in rows]
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    return "\n".join(lines)


def format_summary(report: DatasetReport) -> str:
    """Cases, shapes, spacings, intensity ranges and label counts per class, on one screen."""
    images = report.images
    labelled = sum("label" in case for case in report.cases)
    lines = [f"{len(report.cases)} cases ({labelled} labelled) in {report.dataset_dir}", ""]
    if images:
        lines.append(f"{'':<20}{'min':>22}{'median':>22}{'max':>22}")
        for name, values, fmt in (
            ("shape (voxels)", [v.shape for v in images], "{:.0f}"),
            ("spacing (mm)", [v.spacing for v in images], "{:.3g}"),
        ):
            stats = [np.min(values, axis=0), np.median(values, axis=0), np.max(values, axis=0)]
            cells = [" x ".join(fmt.format(x) for x in stat) for stat in stats]
            lines.append(f"{name:<20}" + "".join(f"{cell:>22}" for cell in cells))
        for channel in range(min(len(v.ranges) for v in images)):
            lows = [v.ranges[channel][0] for v in images]
            highs = [v.ranges[channel][1] for v in images]
            name = "intensity" + (f" ch {channel}" if len(images[0].ranges) > 1 else "")
            cells = [f"{np.nanmin(lows):g}", f"[{np.nanmedian(lows):g}, {np.nanmedian(highs):g}]", f"{np.nanmax(highs):g}"]
            lines.append(f"{name:<20}" + "".join(f"{cell:>22}" for cell in cells))
        lines.append("")
    lines.append(f"{'label code':>10}{'class':>7}{'voxels':>16}{'cases':>8}")
    for code, index in sorted(report.label_codes.items()):
        voxels, cases = report.code_voxels.get(float(code), 0), report.code_cases.get(float(code), 0)
        lines.append(f"{code:>10}{index:>7}{voxels:>16,}{cases:>8}")
    return "\n".join(lines)


def check_data(bundle_dir: str, dataset_dir: str, progress: bool = True, **overrides: Any) -> DatasetReport:
    """``dsd-check-data``: check the dataset, print the problems or the summary.

    Args:
        bundle_dir: the bundle root, e.g. ``bundles/dsd_unetr_mmwhs``.
        dataset_dir: the dataset, as the bundle's ``--dataset_dir``.
        progress: show a progress bar while reading.
        overrides: other config ids and values of the bundle, e.g. ``--in_channels 1``.

    Returns:
        the report, when the dataset has no error.

    Raises:
        SystemExit: code 1 when the dataset has errors, after the table of problems.
    """
    report = check_dataset(bundle_dir, dataset_dir, as_flag(progress, "progress"), **overrides)
    bundle = Path(bundle_dir).resolve().name
    if report.problems:
        print(format_problems(report), end="\n\n")
    if report.errors:
        print(
            f"{len(report.errors)} problem(s) and {len(report.warnings)} warning(s) in {dataset_dir}: "
            f"fix the files above, then run dsd-check-data {bundle_dir} --dataset_dir {dataset_dir} again."
        )
        raise SystemExit(1)
    print(format_summary(report))
    verdict = f"with {len(report.warnings)} warning(s) above" if report.warnings else "no problems found"
    print(f"\n{bundle}: the dataset can be used, {verdict}.")
    return report


def main(argv: list[str] | None = None) -> None:
    """``dsd-check-data BUNDLE_DIR --dataset_dir DATA``."""
    run_command(check_data, argv, name="dsd-check-data")


if __name__ == "__main__":
    main()
