"""What every console command of the lab shares: one way to turn a function into a command line."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import fire

from custom.errors import print_failure

__all__ = [
    "KNOWN_WARNINGS",
    "VERBOSE_ENV",
    "VERBOSE_FLAG",
    "console_arguments",
    "exit_failed",
    "quiet_known_warnings",
    "run_command",
    "verbose",
]

#: Shows every library warning and the bundles' whole log on the console, as ``--verbose`` does.
VERBOSE_ENV = "DSD_VERBOSE"
#: The option of every command that shows every library warning and the bundles' whole log.
VERBOSE_FLAG = "--verbose"

#: Library warnings that tell a user of these commands nothing they can act on: ``(category, message regex,
#: module regex)`` as :func:`warnings.filterwarnings` takes them.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # deprecations inside the libraries, addressed to their developers
    (FutureWarning, "", r"(monai|torch|ignite|mlflow|numpy|scipy|nibabel)(\.|$)"),
    # MONAI's HD95 of a class missing from a prediction or label: NaN, reported as n/a in the tables
    (UserWarning, r"the (prediction|ground truth) of class \d+ is all 0", ""),
    # MONAI's notice, at every config read, that bundle configs run code: these are this repository's bundles
    (UserWarning, r".*is passed to Python `eval\(\)`\. Only proceed if this config is from a source you trust", ""),
    (UserWarning, r"tqdm is not installed", ""),
    # summaries of a class without any value (NaN), reported as n/a
    (RuntimeWarning, r"Mean of empty slice|All-NaN slice encountered|Degrees of freedom <= 0 for slice", ""),
)


def verbose() -> bool:
    """Whether the user asked to see every warning and the whole log: ``--verbose`` or ``DSD_VERBOSE=1``."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_known_warnings() -> None:
    """Hide the :data:`KNOWN_WARNINGS` of the libraries; every other warning still shows.

    Called by the command-line entry points only: code that imports the lab sees every warning.
    """
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


#: Asks for a command's help wherever it stands on the command line.
HELP_FLAGS = ("--help", "-h")


def console_arguments(argv: Sequence[str] | None) -> list[str]:
    """A command's arguments without ``--verbose``, the console set up as they ask.

    ``--verbose`` (any position) sets :data:`VERBOSE_ENV` for this process; without it, or the variable, the
    :data:`KNOWN_WARNINGS` are hidden.

    Args:
        argv: the arguments; ``None`` reads ``sys.argv``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if VERBOSE_FLAG in args:
        os.environ[VERBOSE_ENV] = "1"
    if not verbose():
        quiet_known_warnings()
    return [arg for arg in args if arg != VERBOSE_FLAG]


def help_arguments(args: Sequence[str], subcommands: Sequence[str] = ()) -> list[str]:
    """``args`` as fire reads a request for help: only the sub-command, if any, then ``-- --help``.

    Fire hands ``--help`` to a command that takes ``**kwargs`` as one more option and runs the command; after ``--``
    it always shows the help, but only once the command has run with the other arguments, so those are dropped.
    """
    if "--" in args or not any(arg in HELP_FLAGS for arg in args):
        return list(args)
    subcommand = list(args[:1]) if args and args[0] in subcommands else []
    return [*subcommand, "--", "--help"]


def run_command(component: Callable[..., Any] | dict[str, Callable[..., Any]], argv: Sequence[str] | None = None,
                name: str | None = None) -> None:
    """Run ``component`` as a command line with ``fire``, without echoing its return value.

    Known harmless library warnings are hidden unless ``--verbose`` (any position) or ``DSD_VERBOSE=1`` asks for
    everything.

    Args:
        component: the command's function, or sub-command name -> function.
        argv: the arguments; ``None`` reads ``sys.argv``.
        name: the command's name in help texts.

    Raises:
        SystemExit: code 1 when the command fails (see :func:`exit_failed`); fire's own code for a wrong command line.
    """
    try:
        subcommands = list(component) if isinstance(component, dict) else []
        command = help_arguments(console_arguments(argv), subcommands)
        fire.Fire(component, command=command, name=name, serialize=lambda _: None)
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
