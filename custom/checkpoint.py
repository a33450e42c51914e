"""Training state that survives a killed run: an atomically written resume checkpoint and its loader."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import Workflow
from monai.handlers import CheckpointLoader, CheckpointSaver

from custom.files import atomic_write, remove_stale_temps
from custom.flags import as_flag

__all__ = [
    "AtomicCheckpointSaver",
    "BestModelNotice",
    "ResumeCheckpointLoader",
    "atomic_save",
    "checkpoint_best_metric",
    "resume_requested",
    "state_dict_of",
]

#: The best key metric of a MONAI workflow and its epoch, which ignite's ``Engine.state_dict`` leaves out.
BEST_METRIC_KEYS = ("best_metric", "best_metric_epoch")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` always holds either its old or its new complete content.

    See :func:`custom.files.atomic_write`; a temporary file left by a killed process is removed by
    :func:`custom.files.remove_stale_temps`.

    Args:
        obj: what to save.
        path: the destination; its folder is created if missing.
    """
    atomic_write(path, lambda f: torch.save(obj, f))


def state_dict_of(obj: Any) -> Any:
    """The state dict of a checkpointed object.

    DataParallel and DistributedDataParallel give their wrapped module's, so that the checkpoint loads
    with or without the wrapper. A MONAI :class:`~monai.handlers.CheckpointSaver` gives its best-model
    tracking list, the state its ``load_state_dict`` restores.

    Args:
        obj: a module, optimizer, LR scheduler, engine or MONAI ``CheckpointSaver``.

    Raises:
        ValueError: a ``CheckpointSaver`` that does not save by key metric.
    """
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        obj = obj.module
    if isinstance(obj, CheckpointSaver):
        # MONAI exposes only the loading half; the tracking list lives in its ignite Checkpoint
        tracker = obj._key_metric_checkpoint
        if tracker is None:
            raise ValueError("Only a CheckpointSaver with save_key_metric=True has a state to checkpoint.")
        return {"_saved": [(float(priority), str(name)) for priority, name in tracker.state_dict()["_saved"]]}
    return obj.state_dict()


def resume_requested(resume: bool | str, path: str | os.PathLike) -> bool:
    """Whether a run is to resume from the checkpoint ``path``; checked before anything is built or cached.

    Args:
        resume: the ``resume`` config value; ``true``/``false`` also as the strings the command line gives.
        path: the checkpoint a resumed run loads.

    Raises:
        ValueError: ``resume`` is neither true nor false.
        FileNotFoundError: a resume is requested and ``path`` does not exist.
    """
    requested = as_flag(resume, "resume")
    if requested and not os.path.isfile(path):
        raise FileNotFoundError(_missing_checkpoint(path))
    return requested


def _missing_checkpoint(path: str | os.PathLike) -> str:
    return (
        f"Cannot resume: there is no checkpoint {path}. A training run writes it every checkpoint_interval "
        "epochs; train without --resume to start from scratch."
    )


def checkpoint_best_metric(objs: Iterable[Any]) -> None:
    """Make the MONAI workflows among ``objs`` carry :data:`BEST_METRIC_KEYS` in their state dicts.

    Through ignite's ``state_dict_user_keys``; a resumed run then neither forgets its best metric nor
    announces a worse one as the new best. Other objects are left alone.

    Args:
        objs: the objects, e.g. the values of a ``save_dict``.
    """
    for obj in objs:
        if isinstance(obj, Workflow):
            obj.state_dict_user_keys.extend(k for k in BEST_METRIC_KEYS if k not in obj.state_dict_user_keys)


class AtomicCheckpointSaver:
    """Write the state dicts of the training objects to one fixed file, atomically, every few epochs.

    Unlike MONAI's ``CheckpointSaver``, which writes in place and removes the previous file before
    writing the next, the file is replaced only by a complete new one (:func:`atomic_save`), so that a
    run killed at any moment can resume from it. It holds ``{name: state_dict_of(obj)}`` for every
    object of ``save_dict`` and, under ``engine_key``, the state of the engine the saver is attached
    to (epoch and iteration counters); MONAI workflows, that engine included, keep their best key metric
    (:func:`checkpoint_best_metric`). It is written at every ``interval``-th completed epoch and when
    the run completes; attach it after the handlers that act at the end of an epoch (LR scheduling,
    validation), so that the file holds their result. Temporary files of a killed earlier run are
    removed on attaching. Objects given as ``None`` (a disabled handler) are left out. In a distributed
    run attach it on one rank only.

    Args:
        save_path: the checkpoint file.
        save_dict: name -> object with ``state_dict()``, see :func:`state_dict_of`.
        interval: save every ``interval`` epochs.
        engine_key: the name of the engine's state in the file; ``None`` to leave it out.
        name: the logger's name; the engine's logger if ``None``.

    Raises:
        ValueError: ``interval`` is not positive.
    """

    def __init__(
        self,
        save_path: str | os.PathLike,
        save_dict: Mapping[str, Any],
        interval: int = 1,
        engine_key: str | None = "trainer",
        name: str | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be a positive number of epochs, got {interval}.")
        self.save_path = Path(save_path)
        self.save_dict = {k: v for k, v in save_dict.items() if v is not None}
        checkpoint_best_metric(self.save_dict.values())
        self.interval = interval
        self.engine_key = engine_key
        self.logger = logging.getLogger(name)
        self._name = name
        self._saved_iteration: int | None = None

    def attach(self, engine: Engine) -> None:
        """Save at every ``interval``-th completed epoch and at the end of the run of ``engine``."""
        if self._name is None:
            self.logger = engine.logger
        if self.engine_key is not None:
            checkpoint_best_metric([engine])
        for temp in remove_stale_temps(self.save_path):
            self.logger.warning(f"Removed {temp}, left by an interrupted checkpoint write.")
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval) | Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration == self._saved_iteration:  # the last epoch's save already covers COMPLETED
            return
        state = {name: state_dict_of(obj) for name, obj in self.save_dict.items()}
        if self.engine_key is not None:
            state[self.engine_key] = engine.state_dict()
        atomic_save(state, self.save_path)
        self._saved_iteration = engine.state.iteration
        self.logger.info(f"Saved the resume checkpoint {self.save_path} at epoch {engine.state.epoch}.")


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` for a file of :class:`AtomicCheckpointSaver`, the engine's own state included.

    The engine that it is attached to is loaded from ``engine_key``, so that the config need not name
    the trainer inside the trainer's own handlers; MONAI workflows get their best key metric back
    (:func:`checkpoint_best_metric`). Objects given as ``None`` (a handler disabled on
    this rank of a distributed run) are skipped. After loading it logs from which file and epoch the
    run continues; ``max_epochs`` stays that of the current run, as in ``CheckpointLoader``.

    Args:
        load_path: the checkpoint file.
        load_dict: name -> object to restore, as saved.
        engine_key: the name of the engine's state in the file; ``None`` to leave the engine alone.
        kwargs: other arguments of :class:`~monai.handlers.CheckpointLoader`.

    Raises:
        FileNotFoundError: there is no ``load_path``; raised on construction, before any training.
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        load_dict: Mapping[str, Any],
        engine_key: str | None = "trainer",
        **kwargs: Any,
    ) -> None:
        if not os.path.isfile(load_path):
            raise FileNotFoundError(_missing_checkpoint(load_path))
        super().__init__(str(load_path), {k: v for k, v in load_dict.items() if v is not None}, **kwargs)
        checkpoint_best_metric(self.load_dict.values())
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        if self.engine_key is not None:
            checkpoint_best_metric([engine])
            self.load_dict = {**self.load_dict, self.engine_key: engine}
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        super().__call__(engine)
        self.logger.info(
            f"Resumed training from {self.load_path} after epoch {engine.state.epoch} "
            f"(iteration {engine.state.iteration}); continuing to epoch {engine.state.max_epochs}."
        )


class BestModelNotice:
    """At the end of a training, say so when it wrote no best model, and name the checkpoint to use instead.

    The best model (``model.pt``) is written by validation, so a training shorter than its validation interval
    ends without one; evaluation and inference then need ``--ckpt_file`` pointed at the last model.

    Args:
        best_file: the best model validation writes.
        final_file: the last model, written when training completes.
        name: the logger's name; the engine's logger if ``None``.
    """

    def __init__(self, best_file: str | os.PathLike, final_file: str | os.PathLike, name: str | None = None) -> None:
        self.best_file, self.final_file = Path(best_file), Path(final_file)
        self._name = name
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.best_file.is_file():
            return
        self.logger.warning(
            f"No best model: {self.best_file} was not written, as no validation ran in this training "
            f"(--val_interval is larger than the epochs trained). The last model is {self.final_file}: evaluate or "
            f"infer with --ckpt_file {self.final_file}."
        )
