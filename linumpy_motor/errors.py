"""The exception types entry points report in one line: bad input, a model that cannot be fitted,
and a termination request."""

from __future__ import annotations

import unicodedata
from collections.abc import Collection
from pathlib import Path

__all__ = ["EXIT_BAD_INPUT", "EXIT_NO_MEMORY", "FitError", "InputError", "OutOfMemory", "Terminated", "check_choice",
           "exit_code", "printable"]

EXIT_BAD_INPUT = 2
"""The exit code of a command that reports bad input in one line (also argparse's usage errors)."""
EXIT_NO_MEMORY = 75
"""The exit code of a command whose step did not fit the memory it may use (sysexits' EX_TEMPFAIL): the same
input may run with more memory, so a scheduler retries it with more (the pipeline's ``errorStrategy``)."""


class InputError(ValueError):
    """Bad input: a file, store or parameter the stage cannot use.

    Parameters
    ----------
    path : str or Path or None
        The file or store at fault (``None`` for a bad parameter).
    problem : str
        What is wrong, in a few words.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(printable(problem if path is None else f"{path}: {problem}"))

    def __reduce__(self):
        """Pickle with both arguments, so an error raised in a worker process reaches the parent intact."""
        return type(self), (self.path, self.problem)


class OutOfMemory(InputError):
    """A step's data does not fit the memory it may use: refused before the step starts, or run out
    (:data:`EXIT_NO_MEMORY`). ``path`` is the slice, when there is one."""


def exit_code(exc: BaseException) -> int:
    """The exit code of a command stopped by ``exc``, one of the errors reported in one line."""
    return EXIT_NO_MEMORY if isinstance(exc, OutOfMemory) else EXIT_BAD_INPUT


def printable(text: str) -> str:
    """``text`` with its control characters (a newline or an escape sequence in a file name) written as
    escapes, so a message naming any path stays one line."""
    return "".join(repr(char)[1:-1] if unicodedata.category(char) == "Cc" else char for char in text)


class FitError(ValueError):
    """Too few usable pairs to fit the motor model."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill``), raised in the main thread as Ctrl-C raises
    ``KeyboardInterrupt``, so the same clean-up runs (see :func:`linumpy_motor.pipeline.entry.run_cli`)."""


def check_choice(what: str, value: object, choices: Collection) -> None:
    """Refuse a parameter outside its vocabulary with an :class:`InputError` that lists the choices.

    Parameters
    ----------
    what : str
        What the parameter is, e.g. ``"blending mode"``.
    value : object
        The value given.
    choices : collection
        The vocabulary (its one owner, e.g. :data:`linumpy_motor.stitch.blend.BLENDING_MODES`).
    """
    if value not in choices:
        raise InputError(None, f"unknown {what} {value!r}; use one of {tuple(choices)}")
