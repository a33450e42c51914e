"""What every console command of the lab shares: one way to turn a function into a command line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import fire

__all__ = ["run_command"]


def run_command(component: Callable[..., Any] | dict[str, Callable[..., Any]], argv: Sequence[str] | None = None,
                name: str | None = None) -> None:
    """Run ``component`` as a command line with ``fire``, without echoing its return value.

    Args:
        component: the command's function, or sub-command name -> function.
        argv: the arguments; ``None`` reads ``sys.argv``.
        name: the command's name in help texts.
    """
    fire.Fire(component, command=None if argv is None else list(argv), name=name, serialize=lambda _: None)
