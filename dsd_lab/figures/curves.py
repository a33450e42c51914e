"""A run's training curves: every loss term per epoch, the validation Dice and, where validation scored them, the
Dice of each auxiliary head, from its TensorBoard event files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from custom.definitions import HEAD_DICE_PREFIX, TERM_NAMES
from dsd_lab.figures.canvas import PALETTE, matplotlib_figure, save_png

__all__ = ["VAL_DICE_TAG", "TrainingCurves", "load_training_curves", "training_curves"]

#: The per-validation scalar of the bundles' validation evaluator, logged at the trainer's epoch.
VAL_DICE_TAG = "val_mean_dice"
_ITERATION_PREFIX = "train_loss/"  # per-iteration scalars of TensorBoardStatsHandler(tag_name="train_loss")
_EPOCH_PREFIX = "train_"  # epoch-level scalars train_<term>
_EVENT_GLOB = "events.out.tfevents.*"


@dataclass
class TrainingCurves:
    """Loss and validation curves read from a run's TensorBoard event files.

    Attributes:
        losses: loss term -> ``(x, values)``, in :data:`TERM_NAMES` order, then any other logged term.
        loss_axis: ``"epoch"`` or ``"iteration"``: what the loss ``x`` counts.
        loss_source: how the losses were obtained, for the figure and the user.
        val_dice: ``(epochs, val_mean_dice)``, or ``None`` if not logged.
        zero_terms: terms logged as exactly 0 throughout (weight 0 in the ablation), left out of ``losses``.
        head_dice: head -> ``(epochs, Dice)`` of each auxiliary head's validation Dice, in the paper's order
            (E_1..E_Z, then D_1..D_Z); empty when validation did not score the heads.
    """

    losses: dict[str, tuple[np.ndarray, np.ndarray]]
    loss_axis: str
    loss_source: str
    val_dice: tuple[np.ndarray, np.ndarray] | None
    zero_terms: list[str] = field(default_factory=list)
    head_dice: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


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
    them smoothed). ``val_mean_dice`` and the heads' ``val_head_dice/<head>`` are read at their logged step, the
    trainer's epoch.

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
    names = list(TERM_NAMES) + sorted(set(iteration_tags) - set(TERM_NAMES))
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
    head_tags = sorted((t for t in scalars if t.startswith(HEAD_DICE_PREFIX + "/")), key=_paper_order)
    head_dice = {tag[len(HEAD_DICE_PREFIX) + 1 :]: scalars[tag] for tag in head_tags}
    if not losses and val_dice is None and not zero_terms:
        raise ValueError(
            f"The event files in {files[0].parent} hold none of the expected scalars "
            f"({_EPOCH_PREFIX}<term>, {_ITERATION_PREFIX}<term> for <term> in {list(TERM_NAMES)}, {VAL_DICE_TAG}); "
            f"found {sorted(scalars) or 'no scalars'}."
        )
    return TrainingCurves(losses, axis, source, val_dice, zero_terms, head_dice)


def _paper_order(tag: str) -> tuple[int, int]:
    """Encoders before decoders, each by its number: ``.../E2_x`` before ``.../E10_x`` before ``.../D1_x``."""
    head = tag.rpartition("/")[2]
    number = head[1:].partition("_")[0]
    return (0 if head.startswith("E") else 1, int(number) if number.isdigit() else 0)


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
    """Draw a run's training curves: every loss term in one panel, the validation Dice per epoch in another, and the
    validation Dice of every auxiliary head in a third where validation scored them (``--score_heads true``).

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
    Figure, FigureCanvasAgg = matplotlib_figure()
    if not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}.")
    curves = load_training_curves(log_dir, iterations_per_epoch)

    fig = Figure(figsize=(16, 4) if curves.head_dice else (11, 4), layout="constrained")
    axes = fig.subplots(1, 3 if curves.head_dice else 2)
    loss_ax, dice_ax = axes[:2]
    for rank, (name, (x, y)) in enumerate(curves.losses.items()):
        colour = PALETTE[rank % len(PALETTE)]
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
        dice_ax.plot(epochs, dice, marker="o", markersize=3, color=PALETTE[0])
        best = int(np.argmax(dice))
        dice_ax.plot(epochs[best], dice[best], marker="*", markersize=12, color=PALETTE[3], linestyle="none",
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

    if curves.head_dice:
        _draw_heads(axes[2], curves)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and iterations are whole numbers
    return save_png(fig, FigureCanvasAgg, out_png)


def _draw_heads(ax, curves: TrainingCurves) -> None:
    """Each head's validation Dice, encoders solid and decoders dashed, with the main output's for reference."""
    for rank, (head, (epochs, dice)) in enumerate(curves.head_dice.items()):
        style = "-" if head.startswith("E") else "--"
        ax.plot(epochs, dice, style, marker=".", color=PALETTE[rank % len(PALETTE)], label=head)
    if curves.val_dice is not None:
        ax.plot(*curves.val_dice, color="black", linewidth=2, label="main output")
    ax.set_ylim(0.0, 1.02)
    ax.legend(fontsize=8, loc="best", ncol=2)
    ax.set_title(f"Auxiliary heads ({HEAD_DICE_PREFIX}): E = encoder, D = decoder", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean Dice")
    ax.grid(alpha=0.3)
