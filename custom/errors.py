"""What goes wrong with a dataset and how it is told: the runtime's error types, data problems raised at the first or
collected all at once, and the line that ends a failed command.

Torch-free, so that every command can use it. ``import custom`` installs :func:`install_exception_hook`.
"""

from __future__ import annotations

import contextlib
import re
import sys
import traceback
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "DataError",
    "DataProblem",
    "MissingDataError",
    "collecting_problems",
    "failure_line",
    "install_exception_hook",
    "print_failure",
    "report_problem",
]

#: Fault names, the middle column of the dataset check's table.
MISSING = "missing file"
UNREADABLE = "unreadable"
LISTING = "listing"
DUPLICATE = "duplicate"
CHANNELS = "channels"
SHAPE = "shape"
SPACING = "spacing"
ORIENTATION = "orientation"
LABEL_CODES = "label codes"
NON_FINITE = "NaN/Inf"
EMPTY_LABEL = "empty label"


class DataError(ValueError):
    """A dataset file or listing that the bundles cannot use; the message names the file and what is wrong.

    Constructible from its message alone, as PyTorch's DataLoader rebuilds an error raised in a worker process.

    Args:
        text: the message.
        problem: the problem it reports, when it came from :func:`report_problem`.
    """

    def __init__(self, text: str, problem: DataProblem | None = None) -> None:
        super().__init__(text)
        self.problem = problem


class MissingDataError(DataError, FileNotFoundError):
    """A dataset folder, description file or listed file that does not exist."""


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a dataset: a row of the dataset check's table.

    Attributes:
        file: the file (or folder) at fault.
        fault: what kind of fault, e.g. ``"label codes"``.
        detail: what exactly is wrong, without the file's name.
        warning: whether the dataset is usable anyway (an outlier rather than an error).
    """

    file: str
    fault: str
    detail: str
    warning: bool = False

    def describe(self) -> str:
        """The problem as one line that names the file."""
        return f"{self.file}: {self.detail}"


_collected: ContextVar[list[DataProblem] | None] = ContextVar("collected_data_problems", default=None)


@contextlib.contextmanager
def collecting_problems() -> Iterator[list[DataProblem]]:
    """Within this block the runtime's readers collect every data problem instead of raising at the first.

    Yields:
        the list the problems are appended to, in the order they are found.
    """
    problems: list[DataProblem] = []
    token = _collected.set(problems)
    try:
        yield problems
    finally:
        _collected.reset(token)


def report_problem(file: str | Path, fault: str, detail: str) -> None:
    """Report a data problem: collect it inside :func:`collecting_problems`, raise it everywhere else.

    Args:
        file: the file or folder at fault.
        fault: one of this module's fault names.
        detail: what is wrong, without the file's name.

    Raises:
        MissingDataError: outside :func:`collecting_problems`, for a missing file.
        DataError: outside :func:`collecting_problems`, for any other fault.
    """
    problem = DataProblem(str(file), fault, detail)
    collected = _collected.get()
    if collected is None:
        error = MissingDataError if fault == MISSING else DataError
        raise error(problem.describe(), problem)
    collected.append(problem)


# --- the last line of a failed command ---------------------------------------------------------------------------

_RUNTIME_DIR = Path(__file__).resolve().parent
# How an error of this module reads in the text of an error that a DataLoader worker process raised.
_WORKER_ERROR_LINE = re.compile(rf"^{re.escape(__name__)}\.(\w+): (.+)$", re.M)


def _raised_by_the_runtime(error: BaseException) -> bool:
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().parent == _RUNTIME_DIR


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def failure_line(error: BaseException) -> str | None:
    """The line that says what went wrong, when one of the runtime's own errors is behind ``error``.

    The runtime's own errors are its :class:`DataError` types and any exception raised by its own code (a bad
    ablation name, a negative weight). MONAI wraps them into ``Failed to instantiate component ...`` and
    DataLoader workers pass them on as text; this digs them out.

    Args:
        error: the exception that ended a command.

    Returns:
        ``"<ErrorType>: <message>"``, or ``None`` when no own error is behind ``error`` or ``error`` is the own
        error itself (Python's traceback then already ends with its message).
    """
    if not isinstance(error, Exception):
        return None
    for cause in _chain(error):
        if isinstance(cause, DataError) or _raised_by_the_runtime(cause):
            return None if cause is error else f"{type(cause).__name__}: {cause}"
    for cause in _chain(error):
        found = _WORKER_ERROR_LINE.findall(str(cause))
        if found:
            name, text = found[-1]
            return f"{name}: {text}"
    return None


def _print_failure_line(error: BaseException) -> None:
    line = failure_line(error)
    if line:
        print(line, file=sys.stderr, flush=True)


def install_exception_hook() -> None:
    """Make a command that dies of one of the runtime's own errors end with that error's message.

    The previous ``sys.excepthook`` still prints the whole traceback; one line follows it (see :func:`failure_line`).
    Installing twice changes nothing.
    """
    if getattr(sys.excepthook, "_ends_with_failure_line", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        sys.stdout.flush()  # what the command printed comes before its traceback
        previous(exc_type, error, tb)
        _print_failure_line(error)

    hook._ends_with_failure_line = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def print_failure(error: BaseException) -> None:
    """Print ``error``'s traceback to stderr, then the line that says what went wrong (commands that catch errors)."""
    sys.stdout.flush()
    traceback.print_exception(type(error), error, error.__traceback__)
    _print_failure_line(error)
