"""What every console command of the lab shares: one way to turn a function into a command line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import fire

from custom.errors import print_failure

__all__ = ["exit_failed", "run_command"]


def run_command(component: Callable[..., Any] | dict[str, Callable[..., Any]], argv: Sequence[str] | None = None,
                name: str | None = None) -> None:
    """Run ``component`` as a command line with ``fire``, without echoing its return value.

    Args:
        component: the command's function, or sub-command name -> function.
        argv: the arguments; ``None`` reads ``sys.argv``.
        name: the command's name in help texts.

    Raises:
        SystemExit: code 1 when the command fails (see :func:`exit_failed`); fire's own code for a wrong command line.
    """
    try:
        fire.Fire(component, command=None if argv is None else list(argv), name=name, serialize=lambda _: None)
    except Exception as error:
        exit_failed(error)


def exit_failed(error: Exception) -> NoReturn:
    """End a failed command: its traceback, then the line that says what is wrong when one of the runtime's own
    errors is behind it (:func:`custom.errors.failure_line`), and exit code 1.

    Raises:
        SystemExit: always, with code 1.
    """
    print_failure(error)
    raise SystemExit(1)
