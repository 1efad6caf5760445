"""What every command-line entry point shares: version flag, logging, and one-line errors."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from linumpy_motor import __version__
from linumpy_motor.errors import FitError, InputError, Terminated
from linumpy_motor.io.schemas import first_problem
from linumpy_motor.pipeline import logs

__all__ = ["BAD_INPUT_ERRORS", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_NOT_OK", "EXIT_TERMINATED", "HelpFormatter",
           "make_parser", "run_cli", "stopped_by"]

EXIT_BAD_INPUT = 2
"""Bad input, reported in one line (also argparse's usage errors)."""
EXIT_NOT_OK = 3
"""The run finished but a slice's QC status counts as failing (``--fail-on``)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT, as a shell reports it)."""
EXIT_TERMINATED = 143
"""SIGTERM, as a scheduler's time limit sends (128 + SIGTERM)."""


class _OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (:data:`EXIT_BAD_INPUT`), like every other error."""

    def error(self, message: str):
        """Print ``prog: error: message`` and exit with :data:`EXIT_BAD_INPUT`."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--version`` and the logging options, reporting usage errors in one line."""
    parser = _OneLineErrorParser(prog=prog, description=description, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"{prog} (linumpy-motor) {__version__}")
    logs.add_arguments(parser)
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once: not when there is none, nor for a flag (its help says what it does),
    nor when its help already states it; a default of several values as they are typed (``6 7``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)) or "default" in text \
                or action.nargs == 0:
            return text
        if isinstance(action.default, list | tuple):
            return f"{text} (default: {' '.join(map(str, action.default))})".replace("%", "%%")
        return super()._get_help_string(action) or ""


def run_cli(parser: argparse.ArgumentParser, action: Callable[[argparse.Namespace], int | None],
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``action`` and turn bad input into one line on stderr and :data:`EXIT_BAD_INPUT`.

    Returns
    -------
    int
        0 on success (or the code ``action`` returns, e.g. :data:`EXIT_NOT_OK`); :data:`EXIT_BAD_INPUT` on
        bad input (``InputError``, ``FitError``, a failed validation, a file that cannot be read or
        written; any other error is a bug and keeps its traceback); :data:`EXIT_INTERRUPTED` when
        interrupted (Ctrl-C), :data:`EXIT_TERMINATED` when terminated (SIGTERM to this process): either way
        the work in progress is cleaned up and a rerun resumes.
    """
    args = parser.parse_args(argv)
    bars = False if getattr(args, "no_progress", False) else None
    with logs.configured(args.log_level, debug=args.debug, bars=bars):
        return _run_action(parser, action, args)


BAD_INPUT_ERRORS = (InputError, FitError, ValidationError, OSError)
"""The errors reported in one line with :data:`EXIT_BAD_INPUT` (any other is a bug and keeps its traceback)."""


def stopped_by(exc: BaseException) -> tuple[str, int | None]:
    """What stopped a command, as its last line on stderr says it (after ``PROG: ``), and the exit status
    :func:`run_cli` gives it (None: a bug, which keeps its traceback)."""
    if isinstance(exc, Terminated):  # SIGTERM
        return "terminated (rerun to resume)", EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C
        return "interrupted (rerun to resume)", EXIT_INTERRUPTED
    return f"error: {_one_line(exc)}", EXIT_BAD_INPUT if isinstance(exc, BAD_INPUT_ERRORS) else None


def _run_action(parser: argparse.ArgumentParser, action: Callable[[argparse.Namespace], int | None],
                args: argparse.Namespace) -> int:
    previous = _terminate_like_ctrl_c()
    try:
        code = action(args)
    except (*BAD_INPUT_ERRORS, KeyboardInterrupt) as exc:
        if args.debug:
            traceback.print_exc()
        words, status = stopped_by(exc)
        print(f"{parser.prog}: {words}", file=sys.stderr)
        assert status is not None  # every error caught here has its exit status
        return status
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code or 0


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated


def _terminate_like_ctrl_c():
    """Make SIGTERM raise :class:`Terminated` in the main thread; return the previous handler (None
    when not in the main thread, where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _one_line(exc: BaseException) -> str:
    """A one-line description of an error (the first problem of a pydantic validation error)."""
    if isinstance(exc, ValidationError):
        return first_problem(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
