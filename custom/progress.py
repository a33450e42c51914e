"""Progress of a training, validation or inference run, with the time left, in the log."""

from __future__ import annotations

import datetime
import logging
import time

from ignite.engine import Engine, Events
from monai.engines import Evaluator

__all__ = ["ProgressLogger", "estimate_remaining", "format_seconds"]


def estimate_remaining(elapsed: float, done: int, remaining: int) -> float | None:
    """Seconds left for ``remaining`` iterations at the mean pace of the ``done`` ones.

    Args:
        elapsed: seconds taken by the iterations done.
        done: iterations done in this run.
        remaining: iterations still to do.

    Returns:
        The estimate; ``None`` before the first iteration is done.
    """
    return elapsed / done * remaining if done > 0 else None


def format_seconds(seconds: float | None) -> str:
    """``h:mm:ss``, or ``?`` for an unknown duration."""
    return "?" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


class ProgressLogger:
    """Log where a run is, how long it has taken and how long it will still take.

    A line is logged after an iteration when at least ``interval`` seconds have passed since the last
    line (or the start), and after every epoch of an engine that trains. Trainers' lines give the epoch
    and the iteration within it (``epoch 3/100, iteration 5/16``); evaluators' (MONAI ``Evaluator``) the
    iteration of the current run. The time left is the mean time per iteration so far in this run times
    the iterations still to do until ``max_epochs``: a resumed run estimates from its own iterations,
    not from the counters it restored.

    Args:
        interval: least seconds between two lines within an epoch.
        label: what the run is, at the start of each line, e.g. ``"training"``.
        name: the logger's name; the engine's logger if ``None``.

    Raises:
        ValueError: a negative ``interval``.
    """

    def __init__(self, interval: float = 60.0, label: str = "progress", name: str | None = None) -> None:
        if interval < 0:
            raise ValueError(f"interval must be non-negative, got {interval}.")
        self.interval = float(interval)
        self.label = label
        self.logger = logging.getLogger(name)
        self._name = name
        self._start = self._last_line = 0.0
        self._done = 0
        self._per_epoch = True

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        # MONAI's evaluators count the trainer's epochs, one per run: their epoch says nothing of progress
        self._per_epoch = not isinstance(engine, Evaluator)
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        if self._per_epoch:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.log)

    def started(self, engine: Engine) -> None:
        """Start the clock and the count of this run's iterations."""
        self._start = self._last_line = time.perf_counter()
        self._done = 0

    def iteration_completed(self, engine: Engine) -> None:
        """Count the iteration, and log if ``interval`` seconds have passed since the last line."""
        self._done += 1
        state = engine.state
        epoch_ends = self._per_epoch and state.epoch_length and state.iteration % state.epoch_length == 0
        if not epoch_ends and time.perf_counter() - self._last_line >= self.interval:  # else the epoch's line follows
            self.log(engine)

    def log(self, engine: Engine) -> None:
        """Log the position, the time elapsed and the estimated time left of ``engine``'s run."""
        self._last_line = now = time.perf_counter()
        elapsed = now - self._start
        state = engine.state
        epoch_length = state.epoch_length
        if epoch_length is None:  # an iterable without length: nothing is known of what is left
            position, remaining = f"iteration {state.iteration}", None
        else:
            in_epoch = (state.iteration - 1) % epoch_length + 1 if state.iteration else 0
            left = (state.max_epochs - state.epoch) * epoch_length + epoch_length - in_epoch
            remaining = estimate_remaining(elapsed, self._done, left)
            position = f"iteration {in_epoch}/{epoch_length}"
        if self._per_epoch:
            position = f"epoch {state.epoch}/{state.max_epochs}, {position}"
        self.logger.info(
            f"{self.label}: {position}, elapsed {format_seconds(elapsed)}, time left {format_seconds(remaining)}"
        )
