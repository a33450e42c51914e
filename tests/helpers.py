"""Helpers shared by the bundle tests: run ``python -m monai.bundle`` as a user does, read error chains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from custom.demo import TINY_UNETR

__all__ = ["cli_overrides", "error_chain", "run_cli"]


def cli_overrides(dataset_dir: Path, **extra: Any) -> list[str]:
    """Command-line overrides that shrink a bundle to the tiny UNETR and point it at ``dataset_dir``.

    Args:
        dataset_dir: the value of ``--dataset_dir``.
        extra: more config ids and values; they win over the tiny defaults.

    Returns:
        ``["--key", "json value", ...]``.
    """
    values = {**TINY_UNETR, "dataset_dir": str(dataset_dir), **extra}
    return [arg for key, value in values.items() for arg in (f"--{key}", json.dumps(value))]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run ARGS`` in ``cwd`` and assert that it succeeds.

    Args:
        args: the arguments after ``run``.
        cwd: the working folder.

    Returns:
        the finished process, with its captured output.
    """
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def error_chain(error: BaseException | None) -> str:
    """The messages of an exception and of every exception it was raised from or during, one a line."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)
