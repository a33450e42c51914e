"""``custom.progress``: position, elapsed time and time left of a run, in the log."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine
from monai.engines import SupervisedEvaluator

from custom import progress
from custom.progress import ProgressLogger, estimate_remaining, format_seconds

LOGGER = "test.progress"
#: Seconds that every iteration takes on the fake clock.
STEP = 2.0


@pytest.mark.parametrize(
    "elapsed, done, remaining, expected",
    [(10.0, 5, 5, 10.0), (6.0, 3, 9, 18.0), (3.0, 3, 0, 0.0), (0.0, 0, 10, None)],
)
def test_time_left_is_the_mean_pace_times_the_iterations_left(elapsed, done, remaining, expected):
    assert estimate_remaining(elapsed, done, remaining) == expected


@pytest.mark.parametrize("seconds, expected", [(None, "?"), (0.4, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05")])
def test_durations_read_as_hours_minutes_seconds(seconds, expected):
    assert format_seconds(seconds) == expected


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """A fake ``perf_counter`` for the handler: the test advances ``clock[0]``."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    return now


def _engine(clock: list[float]) -> Engine:
    def step(engine: Engine, batch: int) -> None:
        clock[0] += STEP

    return Engine(step)


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_trainer_logs_each_iteration_with_interval_zero_and_once_per_epoch_end(clock, caplog):
    engine = _engine(clock)
    ProgressLogger(interval=0, label="training", name=LOGGER).attach(engine)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        engine.run(range(3), max_epochs=2)
    lines = _lines(caplog)
    assert lines[0] == "training: epoch 1/2, iteration 1/3, elapsed 0:00:02, time left 0:00:10"
    assert lines[2] == "training: epoch 1/2, iteration 3/3, elapsed 0:00:06, time left 0:00:06"
    assert lines[-1] == "training: epoch 2/2, iteration 3/3, elapsed 0:00:12, time left 0:00:00"
    assert len(lines) == 6  # the last iteration of an epoch gives one line, not two


def test_lines_within_an_epoch_are_at_least_interval_apart(clock, caplog):
    engine = _engine(clock)
    ProgressLogger(interval=3, label="training", name=LOGGER).attach(engine)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        engine.run(range(4), max_epochs=1)
    positions = [line.split(", elapsed")[0] for line in _lines(caplog)]
    assert positions == ["training: epoch 1/1, iteration 2/4", "training: epoch 1/1, iteration 4/4"]


def test_resumed_run_estimates_from_its_own_iterations(clock, caplog):
    engine = _engine(clock)
    ProgressLogger(interval=0, label="training", name=LOGGER).attach(engine)
    engine.load_state_dict({"iteration": 3, "epoch_length": 3, "max_epochs": 2})
    with caplog.at_level(logging.INFO, logger=LOGGER):
        engine.run(range(3), max_epochs=2)
    # 1 iteration in 2 s, 2 left: 4 s; the 3 restored iterations would make it 1 s
    assert _lines(caplog)[0] == "training: epoch 2/2, iteration 1/3, elapsed 0:00:02, time left 0:00:04"


def test_evaluator_logs_the_iterations_of_its_run_without_the_trainer_epoch(clock, caplog):
    class Timed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            clock[0] += STEP
            return x

    batches = [{"image": torch.zeros(1, 1, 2, 2), "label": torch.zeros(1, 1, 2, 2)}] * 3
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=batches, network=Timed())
    ProgressLogger(interval=0, label="validation", name=LOGGER).attach(evaluator)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        evaluator.run(global_epoch=7)
    assert _lines(caplog) == [
        "validation: iteration 1/3, elapsed 0:00:02, time left 0:00:04",
        "validation: iteration 2/3, elapsed 0:00:04, time left 0:00:02",
        "validation: iteration 3/3, elapsed 0:00:06, time left 0:00:00",
    ]


def test_negative_interval_is_refused():
    with pytest.raises(ValueError, match="interval"):
        ProgressLogger(interval=-1)
