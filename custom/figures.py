"""Paper-style figures: a segmentation comparison on one axial slice, and the training curves of a run.

matplotlib is an optional dependency (``pip install "monai-dsd[figures]"``); it is imported only when a
figure is drawn, and drawn on matplotlib's Agg canvas without pyplot, so no global backend is changed.

Usage::

    python -m custom.figures segmentation --image ct_train_1001_image.nii.gz --label ct_train_1001_label.nii.gz \\
        --predictions "{'Basic': 'basic/predictions/ct_train_1001_image_seg.nii.gz', 'DSD': 'dsd/...'}" \\
        --out fig.png [--dataset mmwhs|brats] [--slice_index K] [--channel C] [--window "[-175,250]"]
    python -m custom.figures curves LOG_DIR --out curves.png [--iterations_per_epoch N] [--smoothing 0.6]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fire
import nibabel as nib
import numpy as np

__all__ = [
    "LOSS_TERMS",
    "VAL_DICE_TAG",
    "TrainingCurves",
    "dataset_label_names",
    "load_training_curves",
    "main",
    "segmentation_figure",
    "training_curves",
]

#: The loss terms the bundles log, in :data:`custom.losses.TERM_NAMES` order (not imported: it pulls in torch).
LOSS_TERMS: tuple[str, ...] = ("total", "main_dice_ce", "deep_supervision", "kl_encoder", "kl_decoder")
#: The per-validation scalar of the bundles' validation evaluator, logged at the trainer's epoch.
VAL_DICE_TAG = "val_mean_dice"
_ITERATION_PREFIX = "train_loss/"  # per-iteration scalars of TensorBoardStatsHandler(tag_name="train_loss")
_EPOCH_PREFIX = "train_"  # epoch-level scalars train_<term>
_EVENT_GLOB = "events.out.tfevents.*"

# One fixed qualitative colour per class (matplotlib's tab10 without its grey), by rank of the label code.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_OVERLAY_ALPHA = 0.5
_PANEL_INCHES = 3.0
_DPI = 150
_INSTALL_HINT = 'custom.figures needs matplotlib, an optional dependency: pip install "monai-dsd[figures]"'


def _matplotlib() -> tuple[Any, Any]:
    """Import matplotlib lazily; return ``(Figure, FigureCanvasAgg)``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return Figure, FigureCanvasAgg


def _save(fig: Any, canvas_cls: Any, out_png: str | os.PathLike) -> Path:
    out = Path(out_png).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas_cls(fig)  # attaches the Agg canvas to the figure
    fig.savefig(out, format="png", dpi=_DPI)
    return out


# Display names by label code as stored in the files. Copies of custom.data.MMWHS_LABEL_CODES/MMWHS_CLASS_NAMES and
# custom.msd.BRATS_LABEL_NAMES (tests/test_figures.py keeps them equal): importing those modules imports MONAI
# and torch, which would triple the start-up time of this command line.
_LABEL_NAMES: dict[str, dict[int, str]] = {
    "mmwhs": {
        205: "LV myocardium",
        420: "LA blood cavity",
        500: "LV blood cavity",
        550: "RA blood cavity",
        600: "RV blood cavity",
        820: "ascending aorta",
        850: "pulmonary artery",
    },
    "brats": {1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
}


def dataset_label_names(dataset: str) -> dict[int, str]:
    """Display names of the foreground label codes, as stored in a dataset's label and prediction files.

    Args:
        dataset: ``"mmwhs"`` (codes 205, 420, ..., 850) or ``"brats"`` (MSD Task01 codes 1, 2, 3).

    Returns:
        ``{code: name}``, e.g. ``{205: "LV myocardium", ...}``.

    Raises:
        ValueError: an unknown dataset.
    """
    key = str(dataset).lower()
    if key not in _LABEL_NAMES:
        raise ValueError(f"Unknown dataset '{dataset}'; choose one of {sorted(_LABEL_NAMES)}.")
    return dict(_LABEL_NAMES[key])


# ---------------------------------------------------------------------------------------------------------------
# Segmentation figure
# ---------------------------------------------------------------------------------------------------------------


def _load(path: str | os.PathLike, role: str) -> nib.spatialimages.SpatialImage:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{role} file not found: {path}")
    try:
        return nib.load(path)
    except Exception as error:  # nibabel raises several types for unreadable files
        raise ValueError(f"Cannot read the {role} file {path}: {error}") from error


def _canonical(img: nib.spatialimages.SpatialImage, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``data`` (spatial axes first) to the closest RAS orientation; return it and its voxel spacing."""
    ornt = nib.orientations.io_orientation(img.affine)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    return nib.orientations.apply_orientation(data, ornt), spacing


def _axial_view(volume: np.ndarray, index: int) -> np.ndarray:
    """Axial slice ``index`` of a RAS volume as a displayed 2-D array: anterior up, patient's right on the left."""
    return volume[::-1, ::-1, index].T


def _label_header(
    path: str | os.PathLike, role: str, grid: tuple[int, ...], image_path: Path
) -> nib.spatialimages.SpatialImage:
    """Load a label map's header and check that it lies on the image's grid (trailing axes of size 1 allowed)."""
    img = _load(path, role)
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:  # (X, Y, Z, 1) label files
        shape = shape[:-1]
    if shape != grid:
        raise ValueError(
            f"{role} {Path(path)} has shape {tuple(img.shape)} but the image {image_path} has the grid {grid}: "
            "labels and predictions must be on the image's original grid."
        )
    return img


def _label_volume(
    img: nib.spatialimages.SpatialImage, path: str | os.PathLike, role: str, codes: Sequence[int]
) -> np.ndarray:
    """Read a label map, check that it holds some named code if it holds any foreground, reorient it to RAS."""
    data = np.asanyarray(img.dataobj).reshape(img.shape[:3])
    if not np.isin(data, codes).any() and data.any():
        found = np.unique(data[data != 0])[:10].tolist()
        raise ValueError(
            f"{role} {Path(path)} holds the label codes {found} but none of the named codes {list(codes)}: "
            "are the label names those of this dataset (MM-WHS 205..850 or BraTS 1..3), and does the file hold "
            "label codes rather than class indices?"
        )
    return _canonical(img, data)[0]


def _check_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    if window is None:
        return None
    if len(window) != 2 or not float(window[0]) < float(window[1]):
        raise ValueError(f"window must be (low, high) with low < high, got {window!r}.")
    return float(window[0]), float(window[1])


def segmentation_figure(
    image: str | os.PathLike,
    label: str | os.PathLike,
    predictions: Mapping[str, str | os.PathLike],
    out_png: str | os.PathLike,
    label_names: Mapping[int, str],
    slice_index: int | None = None,
    channel: int = 0,
    window: Sequence[float] | None = None,
) -> tuple[Path, int]:
    """Draw one axial slice of a scan, its ground truth and each model's prediction side by side (paper Fig. 2).

    Every volume is reoriented by its own affine to the closest RAS orientation, so axial is the last axis,
    and shown with anterior up and the patient's right on the left (radiological convention). Label classes
    are overlaid semi-transparently on the image, each in one fixed colour in every panel (colours by rank of
    the code; 9 distinct colours, then they repeat), with one legend naming them. Voxels whose code is not in
    ``label_names`` (background, MM-WHS' stray 421) are not coloured.

    Args:
        image: the scan (NIfTI). 3-D, or 4-D with the channels last as MSD stores them (``X, Y, Z, C``).
        label: the ground-truth label map on the image's grid, with the dataset's codes.
        predictions: model name -> predicted label map on the image's grid (as the bundles' evaluation writes
            to ``<output_dir>/predictions/<case>_seg.nii.gz``), one panel each, in this order.
        out_png: the PNG to write; parent folders are created, an existing file is replaced.
        label_names: label code as stored in the files -> display name, e.g. :func:`dataset_label_names`.
            Code 0 (background) is never drawn.
        slice_index: the axial slice in the RAS-reoriented volume (0 = most inferior); ``None`` picks the
            slice with the most ground-truth foreground (the middle slice if the label is empty).
        channel: the image channel shown for 4-D images (for BraTS 0 = FLAIR, 1 = T1w, 2 = t1gd, 3 = T2w).
        window: ``(low, high)`` display window in image units, e.g. ``(-175, 250)`` HU for CT;
            default the 1st to 99th percentile of the shown slice.

    Returns:
        ``(path of the written PNG, the axial slice index shown)``.

    Raises:
        FileNotFoundError: the image, label or a prediction file does not exist.
        ValueError: no prediction; an unreadable file; a label or prediction not on the image's grid; a file
            holding codes of which none is named; a bad channel, slice index, window or ``label_names``.
        ImportError: matplotlib is not installed.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    if not isinstance(predictions, Mapping) or len(predictions) < 1:
        raise ValueError(
            "predictions must map at least one model name to a prediction file, e.g. "
            f"{{'Basic': 'a_seg.nii.gz', 'DSD': 'b_seg.nii.gz'}}; got {predictions!r}."
        )
    names = {int(code): str(name) for code, name in label_names.items() if int(code) != 0}
    if not names:
        raise ValueError(f"label_names must name at least one non-zero label code, got {dict(label_names)!r}.")
    codes = sorted(names)
    window = _check_window(window)

    # Check every file's presence and grid from the headers before reading any voxel data.
    image_path = Path(image).expanduser()
    image_img = _load(image_path, "Image")
    if len(image_img.shape) not in (3, 4):
        raise ValueError(f"Image {image_path} has shape {image_img.shape}: expected 3-D, or 4-D with channels last.")
    num_channels = image_img.shape[3] if len(image_img.shape) == 4 else 1
    if not 0 <= int(channel) < num_channels:
        raise ValueError(f"channel {channel} is out of range: image {image_path} has {num_channels} channel(s).")
    grid = tuple(image_img.shape[:3])
    maps = [("Ground truth", label, "Label")]
    maps += [(name, path, f"Prediction '{name}'") for name, path in predictions.items()]
    headers = [_label_header(path, role, grid, image_path) for _, path, role in maps]

    dataobj = image_img.dataobj[..., int(channel)] if len(image_img.shape) == 4 else image_img.dataobj
    volume, spacing = _canonical(image_img, np.asanyarray(dataobj))
    panels: list[tuple[str, np.ndarray | None]] = []
    for (title, path, role), header in zip(maps, headers):
        labels = _label_volume(header, path, role, codes)
        if labels.shape != volume.shape:  # same grid shape, but the affine permutes the axes otherwise
            raise ValueError(f"{role} {Path(path)} is oriented differently from the image {image_path}.")
        panels.append((title, labels))
    gt = panels[0][1]

    depth = volume.shape[2]
    if slice_index is None:
        counts = np.isin(gt, codes).sum(axis=(0, 1))
        slice_index = int(np.argmax(counts)) if counts.any() else depth // 2
    elif not 0 <= int(slice_index) < depth:
        raise ValueError(f"slice_index {slice_index} is out of range: the image has {depth} axial slices.")
    slice_index = int(slice_index)

    shown = _axial_view(volume, slice_index).astype(np.float32)
    low, high = window if window is not None else np.percentile(shown, (1, 99))
    if high <= low:
        high = low + 1.0
    colours = {code: _PALETTE[rank % len(_PALETTE)] for rank, code in enumerate(codes)}
    panels.insert(0, (f"Image (axial slice {slice_index})", None))

    height, width = shown.shape
    aspect = float(spacing[1] / spacing[0])  # pixel height / width: rows run along A, columns along R
    panel_h = float(np.clip(_PANEL_INCHES * height * aspect / width, 1.5, 2 * _PANEL_INCHES))
    fig = Figure(figsize=(_PANEL_INCHES * len(panels), panel_h + 0.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, labels) in zip(axes, panels):
        ax.imshow(shown, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        if labels is not None:
            ax.imshow(_overlay(_axial_view(labels, slice_index), colours), aspect=aspect, interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.set_axis_off()
    for x, text in ((0.02, "R"), (0.98, "L")):  # the patient's sides
        axes[0].text(x, 0.5, text, transform=axes[0].transAxes, color="yellow", fontsize=9, ha="center", va="center")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colours[c], edgecolor="none", label=names[c]) for c in codes]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False, fontsize=10)
    return _save(fig, FigureCanvasAgg, out_png), slice_index


def _overlay(labels: np.ndarray, colours: Mapping[int, str]) -> np.ndarray:
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*labels.shape, 4), np.float32)
    for code, colour in colours.items():
        rgba[labels == code] = to_rgba(colour, _OVERLAY_ALPHA)
    return rgba


# ---------------------------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingCurves:
    """Loss and validation curves read from a run's TensorBoard event files.

    Attributes:
        losses: loss term -> ``(x, values)``, in :data:`LOSS_TERMS` order, then any other logged term.
        loss_axis: ``"epoch"`` or ``"iteration"``: what the loss ``x`` counts.
        loss_source: how the losses were obtained, for the figure and the user.
        val_dice: ``(epochs, val_mean_dice)``, or ``None`` if not logged.
        zero_terms: terms logged as exactly 0 throughout (weight 0 in the ablation), left out of ``losses``.
    """

    losses: dict[str, tuple[np.ndarray, np.ndarray]]
    loss_axis: str
    loss_source: str
    val_dice: tuple[np.ndarray, np.ndarray] | None
    zero_terms: list[str] = field(default_factory=list)


def _event_files(log_dir: str | os.PathLike) -> list[Path]:
    root = Path(log_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"TensorBoard log folder does not exist: {root}")
    files = sorted(p for p in root.rglob(_EVENT_GLOB) if p.is_file())
    if not files:
        raise FileNotFoundError(f"No TensorBoard event files ({_EVENT_GLOB}) in {root} or its subfolders.")
    folders = sorted({str(p.parent) for p in files})
    if len(folders) > 1:
        raise ValueError(f"Event files of several runs under {root}, in {folders}: pass the folder of one run.")
    return files


def _read_scalars(files: Sequence[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tag -> ``(steps, values)`` over all files; a step logged twice (a resumed run) keeps its latest value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events: dict[str, dict[int, tuple[float, float]]] = {}
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every event
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            by_step = events.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                if event.step not in by_step or event.wall_time >= by_step[event.step][0]:
                    by_step[event.step] = (event.wall_time, event.value)
    scalars = {}
    for tag, by_step in events.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        scalars[tag] = steps, np.array([by_step[s][1] for s in steps], dtype=np.float64)
    return scalars


def _per_epoch(steps: np.ndarray, values: np.ndarray, iterations_per_epoch: int) -> tuple[np.ndarray, np.ndarray]:
    epochs = (steps - 1) // iterations_per_epoch + 1  # ignite counts iterations from 1 across epochs
    unique, index = np.unique(epochs, return_inverse=True)
    return unique, np.bincount(index, weights=values) / np.bincount(index)


def load_training_curves(log_dir: str | os.PathLike, iterations_per_epoch: int | None = None) -> TrainingCurves:
    """Read the loss terms and the validation Dice of one training run from its TensorBoard event files.

    Losses come from the epoch-level scalars ``train_<term>`` when any is logged. Otherwise they come from
    the per-iteration scalars ``train_loss/<term>``: averaged per epoch when ``iterations_per_epoch`` is
    given (the event files do not record it), else left per iteration (:func:`training_curves` then draws
    them smoothed). ``val_mean_dice`` is read at its logged step, the trainer's epoch.

    Args:
        log_dir: the run's TensorBoard folder (the bundle's ``output_dir``); event files in one folder,
            this one or a subfolder.
        iterations_per_epoch: iterations of one epoch, to average per-iteration losses per epoch.

    Returns:
        the curves.

    Raises:
        FileNotFoundError: ``log_dir`` does not exist or holds no event file.
        ValueError: event files in several folders (several runs), none of the expected tags, or a bad
            ``iterations_per_epoch``.
    """
    n = iterations_per_epoch
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"iterations_per_epoch must be a positive integer, got {iterations_per_epoch!r}.")
    files = _event_files(log_dir)
    scalars = _read_scalars(files)

    iteration_tags = {t[len(_ITERATION_PREFIX) :]: t for t in scalars if t.startswith(_ITERATION_PREFIX)}
    names = list(LOSS_TERMS) + sorted(set(iteration_tags) - set(LOSS_TERMS))
    epoch_tags = {n: _EPOCH_PREFIX + n for n in names if _EPOCH_PREFIX + n in scalars}
    if epoch_tags:
        tags, axis, source = epoch_tags, "epoch", "epoch-level train_<term>"
    elif iterations_per_epoch is not None:
        tags, axis = iteration_tags, "epoch"
        source = f"train_loss/<term> averaged per epoch of {int(iterations_per_epoch)} iterations"
    else:
        tags, axis, source = iteration_tags, "iteration", "train_loss/<term> per iteration"

    losses, zero_terms = {}, []
    for name in (n for n in names if n in tags):
        steps, values = scalars[tags[name]]
        if not epoch_tags and iterations_per_epoch is not None:
            steps, values = _per_epoch(steps, values, int(iterations_per_epoch))
        if np.all(values == 0):
            zero_terms.append(name)
        else:
            losses[name] = steps, values
    val_dice = scalars.get(VAL_DICE_TAG)
    if not losses and val_dice is None and not zero_terms:
        raise ValueError(
            f"The event files in {files[0].parent} hold none of the expected scalars "
            f"({_EPOCH_PREFIX}<term>, {_ITERATION_PREFIX}<term> for <term> in {list(LOSS_TERMS)}, {VAL_DICE_TAG}); "
            f"found {sorted(scalars) or 'no scalars'}."
        )
    return TrainingCurves(losses, axis, source, val_dice, zero_terms)


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average."""
    out, last = np.empty_like(values), 0.0
    for i, value in enumerate(values):
        last = last * weight + (1.0 - weight) * value
        out[i] = last / (1.0 - weight ** (i + 1))
    return out


def training_curves(
    log_dir: str | os.PathLike,
    out_png: str | os.PathLike,
    iterations_per_epoch: int | None = None,
    smoothing: float = 0.6,
) -> Path:
    """Draw a run's training curves: every loss term in one panel, the validation Dice per epoch in another.

    Loss terms are read as :func:`load_training_curves` describes; terms logged as 0 throughout (weight 0)
    are left out and named in the panel title. Per-iteration losses are drawn faintly, with TensorBoard's
    exponential moving average (``smoothing``) over them. The loss axis is logarithmic when every value is
    positive, since the terms differ by orders of magnitude.

    Args:
        log_dir: the run's TensorBoard folder (the bundle's ``output_dir``).
        out_png: the PNG to write; parent folders are created, an existing file is replaced.
        iterations_per_epoch: iterations per epoch, to average per-iteration losses per epoch.
        smoothing: moving-average weight in ``[0, 1)`` for per-iteration losses; 0 draws them raw.

    Returns:
        the path of the written PNG.

    Raises:
        FileNotFoundError: ``log_dir`` does not exist or holds no event file.
        ValueError: several runs' event files, none of the expected tags, or a bad argument.
        ImportError: matplotlib is not installed.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    if not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}.")
    curves = load_training_curves(log_dir, iterations_per_epoch)

    fig = Figure(figsize=(11, 4), layout="constrained")
    loss_ax, dice_ax = fig.subplots(1, 2)
    for rank, (name, (x, y)) in enumerate(curves.losses.items()):
        colour = _PALETTE[rank % len(_PALETTE)]
        if curves.loss_axis == "iteration" and smoothing > 0:
            loss_ax.plot(x, y, color=colour, alpha=0.25, linewidth=0.8)
            loss_ax.plot(x, _ema(y, float(smoothing)), color=colour, label=name)
        else:
            loss_ax.plot(x, y, color=colour, label=name, marker="." if len(x) < 50 else None)
    if curves.losses:
        if all(np.all(y > 0) for _, y in curves.losses.values()):
            loss_ax.set_yscale("log")
        loss_ax.legend(fontsize=9)
    else:
        loss_ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=loss_ax.transAxes)
    title = f"Training loss ({curves.loss_source})"
    if curves.zero_terms:
        title += f"\n0 throughout, not drawn: {', '.join(curves.zero_terms)}"
    loss_ax.set_title(title, fontsize=10)
    loss_ax.set_xlabel(curves.loss_axis)
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)

    if curves.val_dice is not None:
        epochs, dice = curves.val_dice
        dice_ax.plot(epochs, dice, marker="o", markersize=3, color=_PALETTE[0])
        best = int(np.argmax(dice))
        dice_ax.plot(epochs[best], dice[best], marker="*", markersize=12, color=_PALETTE[3], linestyle="none",
                     label=f"best {dice[best]:.3f} at epoch {epochs[best]}")
        dice_ax.legend(fontsize=9, loc="best")
        dice_ax.set_ylim(0.0, max(1.0, float(dice.max())) * 1.02)
    else:
        dice_ax.text(0.5, 0.5, f"no {VAL_DICE_TAG} logged", ha="center", va="center", transform=dice_ax.transAxes)
    dice_ax.set_title(f"Validation ({VAL_DICE_TAG})", fontsize=10)
    dice_ax.set_xlabel("epoch")
    dice_ax.set_ylabel("mean Dice")
    dice_ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, dice_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and iterations are whole numbers
    return _save(fig, FigureCanvasAgg, out_png)


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def _segmentation_cli(
    image: str,
    label: str,
    predictions: Mapping[str, str],
    out: str,
    dataset: str = "mmwhs",
    slice_index: int | None = None,
    channel: int = 0,
    window: Sequence[float] | None = None,
) -> None:
    """Write a segmentation comparison PNG (see ``segmentation_figure``); ``--dataset`` picks the label names."""
    if isinstance(predictions, str):
        raise ValueError(
            f"--predictions must be a mapping of model name to file, e.g. \"{{'Basic': 'a.nii.gz', 'DSD': "
            f"'b.nii.gz'}}\"; got the string {predictions!r}."
        )
    path, index = segmentation_figure(
        image, label, predictions, out, dataset_label_names(dataset), slice_index, channel, window
    )
    print(f"Wrote {path} (axial slice {index})")


def _curves_cli(log_dir: str, out: str, iterations_per_epoch: int | None = None, smoothing: float = 0.6) -> None:
    """Write a training-curves PNG from a run's TensorBoard folder (see ``training_curves``)."""
    print(f"Wrote {training_curves(log_dir, out, iterations_per_epoch, smoothing)}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``segmentation`` and ``curves`` sub-commands.

    Args:
        argv: the arguments; ``None`` reads ``sys.argv``.
    """
    fire.Fire({"segmentation": _segmentation_cli, "curves": _curves_cli}, command=argv, name="custom.figures")


if __name__ == "__main__":
    main()
