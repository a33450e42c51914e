"""The MM-WHS bundle's training in-process: reproducible with a seed, every loss term an epoch metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from custom.definitions import TERM_NAMES
from tests.helpers import MMWHS_BUNDLE as BUNDLE_DIR
from tests.helpers import tiny_train_workflow

pytestmark = pytest.mark.usefixtures("single_thread")


def _train(bundle_root: Path, dataset_dir: Path, **overrides: Any) -> tuple[list[float], dict[str, float]]:
    """One epoch of the tiny bundle without validation; the loss of every iteration and the epoch metrics."""
    workflow = tiny_train_workflow(BUNDLE_DIR, dataset_dir, bundle_root, max_epochs=1, **{"val_interval": 2, **overrides})
    losses: list[float] = []
    workflow.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: losses.append(engine.state.output["loss"].item())
    )
    workflow.run()
    return losses, dict(workflow.trainer.state.metrics)


def test_same_seed_gives_the_same_losses(tmp_path, mmwhs_dataset):
    first = _train(tmp_path / "first", mmwhs_dataset)
    second = _train(tmp_path / "second", mmwhs_dataset)
    other_seed = _train(tmp_path / "other", mmwhs_dataset, seed=1)
    assert len(first[0]) == 4
    assert first == second
    assert other_seed[0] != first[0]  # the losses do depend on the seed


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in log_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


@pytest.mark.parametrize("ablation", ["Basic", "DSD"])
def test_every_loss_term_is_an_epoch_mean_in_tensorboard(tmp_path, mmwhs_dataset, ablation, capfd):
    losses, metrics = _train(tmp_path, mmwhs_dataset, ablation=ablation)
    # one epoch, validation every 2: no best model, and the last lines say which checkpoint to use instead
    assert not (tmp_path / "models" / "model.pt").exists()
    last_lines = capfd.readouterr().out.strip().splitlines()[-2:]  # the bundle's logging.conf logs to stdout
    notice = "model.pt was not written, as no validation ran in this training (--val_interval is larger"
    assert any(notice in line and f"--ckpt_file {tmp_path / 'models' / 'model_final.pt'}" in line for line in last_lines)
    scalars = _scalars(tmp_path / "eval")
    for term in TERM_NAMES:
        per_iteration = [value for _, value in scalars[f"train_loss/{term}"]]
        assert len(per_iteration) == len(losses)
        assert [step for step, _ in scalars[f"train_{term}"]] == [1]  # one value, at epoch 1
        epoch_mean = scalars[f"train_{term}"][0][1]
        assert epoch_mean == pytest.approx(sum(per_iteration) / len(per_iteration), rel=1e-5)
        assert metrics[f"train_{term}"] == pytest.approx(epoch_mean, rel=1e-6)
    if ablation == "Basic":  # terms of weight 0 are not computed and read 0
        assert [metrics[f"train_{t}"] for t in ("deep_supervision", "kl_encoder", "kl_decoder")] == [0.0] * 3
        assert metrics["train_total"] == pytest.approx(metrics["train_main_dice_ce"])


def test_validation_scores_every_head_and_encoder_supervision_is_a_logged_term(tmp_path, mmwhs_dataset):
    _, metrics = _train(tmp_path, mmwhs_dataset, score_heads=True, val_interval=1, eta_encoder=0.5)
    assert metrics["train_encoder_supervision"] > 0
    scalars = _scalars(tmp_path / "eval")
    heads = sorted(tag for tag in scalars if tag.startswith("val_head_dice/"))
    assert len(heads) == 8 and "val_head_dice/D4_decoder5_input" in heads
    assert all([step for step, _ in scalars[tag]] == [1] and 0.0 <= scalars[tag][0][1] <= 1.0 for tag in heads)
