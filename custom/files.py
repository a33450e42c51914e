"""Files written so that a kill never leaves half of one, and case files listed in a stable order."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_json", "natural_key", "remove_stale_temps"]

_TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write`` such that it always holds either its old or its new complete content.

    The data goes to a temporary file in the same folder, is flushed to disk, and then renamed onto ``path``;
    the folder is synced so that the rename itself is durable. A failure or a kill at any moment leaves the
    previous file as it was. A failed write removes its temporary file; one left by a killed process is
    removed by :func:`remove_stale_temps`.

    Args:
        path: the destination; its folder is created if missing.
        write: called once with the open binary temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; the result is as readable as a plain open() would leave it
        os.chmod(temp, os.stat(temp).st_mode | stat.S_IRGRP | stat.S_IROTH)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def atomic_write_json(path: str | os.PathLike, content: Any) -> None:
    """:func:`atomic_write` of ``content`` as JSON with 4-space indentation and a final newline."""
    atomic_write(path, lambda f: f.write((json.dumps(content, indent=4) + "\n").encode()))


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that a killed :func:`atomic_write` to ``path`` left behind.

    Returns:
        The removed files.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f"{_temp_prefix(path)}*{_TEMP_SUFFIX}")) if path.parent.is_dir() else []
    for temp in stale:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return stale


def natural_key(name: str) -> list[int | str]:
    """Sort key under which numbers compare as numbers, so that case 999 sorts before case 1000."""
    return [int(token) if token.isdigit() else token for token in re.split(r"(\d+)", name)]
