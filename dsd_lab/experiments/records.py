"""The record of a run folder: the settings a run was started with and how far it got.

``experiment.json`` records the bundle, config files and overrides of a run. Running the same experiment again
reads it to skip what is finished and to refuse settings that differ from the recorded ones, rather than mixing two
experiments in one folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from custom.files import atomic_write_json

__all__ = ["RECORD_FILE", "read_record", "start_record", "write_record"]

RECORD_FILE = "experiment.json"


def _comparable(value: Any) -> Any:
    # Round-trip through JSON so that tuples from fire compare equal to the lists read back from a record.
    return json.loads(json.dumps(value))


def read_record(run_dir: str | os.PathLike) -> dict | None:
    """The settings and progress recorded in a run folder, or ``None`` if it has none."""
    path = Path(run_dir) / RECORD_FILE
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def write_record(run_dir: str | os.PathLike, record: dict) -> None:
    """Write a run folder's record atomically: a run killed while writing leaves the previous record whole."""
    atomic_write_json(Path(run_dir) / RECORD_FILE, record)


def start_record(run_dir: str | os.PathLike, settings: dict) -> dict:
    """The record of a run folder started with ``settings``: a new one, or the existing one if its settings match.

    Args:
        run_dir: the run folder.
        settings: ``{"bundle", "config_files", "overrides"}`` of the run.

    Returns:
        The record: the settings with the progress flags ``trained`` and ``evaluated``.

    Raises:
        ValueError: the folder records a run with other settings; the message names the file and each difference.
    """
    record = read_record(run_dir)
    if record is None:
        record = {**settings, "trained": False, "evaluated": False}
        write_record(run_dir, record)
        return record
    now = _comparable(settings)
    differences = [
        f"{key}: {record.get(key)!r} there, {value!r} now"
        for key, value in now.items()
        if key != "overrides" and record.get(key) != value
    ]
    recorded, requested = record.get("overrides", {}), now["overrides"]
    differences += [
        f"{key}: {recorded.get(key, '(not set)')!r} there, {requested.get(key, '(not set)')!r} now"
        for key in sorted(set(recorded) | set(requested))
        if recorded.get(key) != requested.get(key)
    ]
    if differences:
        raise ValueError(
            f"{Path(run_dir) / RECORD_FILE} records a run with other settings ({'; '.join(differences)}). "
            "Use another work folder, or delete that run folder to start it again."
        )
    return record
