"""A run's training-curves PNG from its TensorBoard event files, and its command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from custom.definitions import TERM_NAMES  # noqa: E402
from dsd_lab.figures.curves import load_training_curves, training_curves  # noqa: E402

EPOCHS, ITERS = 4, 3


def _write_run(log_dir: Path, epoch_level: bool = False, iteration_level: bool = True, zero=("kl_encoder",)) -> None:
    """A run as the bundles log it: per-iteration loss terms and val_mean_dice per epoch, from two writers."""
    from torch.utils.tensorboard import SummaryWriter

    train, val = SummaryWriter(str(log_dir)), SummaryWriter(str(log_dir))
    for step in range(1, EPOCHS * ITERS + 1):
        for rank, term in enumerate(TERM_NAMES):
            if iteration_level:
                train.add_scalar(f"train_loss/{term}", 0.0 if term in zero else float(step + rank), step)
    for epoch in range(1, EPOCHS + 1):
        if epoch_level:
            for term in TERM_NAMES:
                train.add_scalar(f"train_{term}", 0.0 if term in zero else 100.0 + epoch, epoch)
        val.add_scalar("val_mean_dice", epoch / 10, epoch)
    train.close()
    val.close()


@pytest.mark.parametrize(
    "epoch_level, iterations_per_epoch, axis, total",
    [
        (True, None, "epoch", [101.0, 102.0, 103.0, 104.0]),  # epoch-level preferred, even with per-iteration logged
        (False, ITERS, "epoch", [2.0, 5.0, 8.0, 11.0]),  # mean of iterations 1-3, 4-6, ...
        (False, None, "iteration", list(map(float, range(1, EPOCHS * ITERS + 1)))),
    ],
    ids=["epoch-level", "averaged-per-epoch", "per-iteration"],
)
def test_training_curves_read_the_right_scalars(tmp_path, epoch_level, iterations_per_epoch, axis, total):
    _write_run(tmp_path, epoch_level=epoch_level)
    curves = load_training_curves(tmp_path, iterations_per_epoch)
    assert curves.loss_axis == axis
    assert list(curves.losses) == [t for t in TERM_NAMES if t != "kl_encoder"]
    assert curves.zero_terms == ["kl_encoder"]  # weight-0 terms are logged as 0: left out
    np.testing.assert_allclose(curves.losses["total"][1], total)
    np.testing.assert_allclose(curves.val_dice[0], range(1, EPOCHS + 1))

    out = training_curves(tmp_path, tmp_path / "plots" / "curves.png", iterations_per_epoch)
    height, width = imread(out).shape[:2]
    assert (width, height) == (1650, 600)


def _nested_runs(log_dir: Path) -> None:
    for run in ("run-1", "run-2"):
        _write_run(log_dir / run)


@pytest.mark.parametrize(
    "prepare, error, message",
    [
        (lambda d: None, FileNotFoundError, "No TensorBoard event files"),
        (lambda d: d.rmdir(), FileNotFoundError, "TensorBoard log folder does not exist"),
        (_nested_runs, ValueError, "several runs"),
    ],
    ids=["empty-folder", "no-folder", "several-runs"],
)
def test_training_curves_fail_clearly(tmp_path, prepare, error, message):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    prepare(log_dir)
    with pytest.raises(error, match=message):
        training_curves(log_dir, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_training_curves_with_validation_only(tmp_path):
    _write_run(tmp_path, iteration_level=False)
    assert load_training_curves(tmp_path).losses == {}
    assert imread(training_curves(tmp_path, tmp_path / "c.png")).shape[:2] == (600, 1650)


def test_training_curves_draw_every_scored_head_in_the_papers_order(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    _write_run(tmp_path, iteration_level=False)
    with SummaryWriter(str(tmp_path)) as writer:
        for epoch in range(1, EPOCHS + 1):
            for head in ("D2_decoder4", "E10_deep", "D1_decoder3", "E2_encoder2"):
                writer.add_scalar(f"val_head_dice/{head}", epoch / 20, epoch)
    curves = load_training_curves(tmp_path)
    assert list(curves.head_dice) == ["E2_encoder2", "E10_deep", "D1_decoder3", "D2_decoder4"]
    np.testing.assert_allclose(curves.head_dice["E2_encoder2"][1], [0.05, 0.1, 0.15, 0.2])
    assert imread(training_curves(tmp_path, tmp_path / "c.png")).shape[:2] == (600, 2400)  # a third panel


def test_training_curves_without_expected_tags_list_what_was_found(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("lr", 0.1, 1)
    with pytest.raises(ValueError, match=r"none of the expected scalars.*found \['lr'\]"):
        training_curves(tmp_path, tmp_path / "c.png")


def test_curves_command_line(tmp_path):
    _write_run(tmp_path / "run")
    out = tmp_path / "curves.png"
    cmd = ["dsd-figures", "curves", str(tmp_path / "run"), "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and f"Wrote {out}" in result.stdout
