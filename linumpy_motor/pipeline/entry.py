"""What every command-line entry point shares: version flag, logging, and one-line errors."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from linumpy_motor import __version__, interrupts, memory
from linumpy_motor.errors import EXIT_BAD_INPUT, FitError, InputError, Terminated, exit_code, printable
from linumpy_motor.interrupts import EXIT_INTERRUPTED, EXIT_TERMINATED
from linumpy_motor.io.schemas import first_problem
from linumpy_motor.pipeline import logs

__all__ = ["BAD_INPUT_ERRORS", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_NOT_OK", "EXIT_TERMINATED", "HelpFormatter",
           "make_parser", "run_cli", "stopped_by"]

EXIT_NOT_OK = 3
"""The run finished but a slice's QC status counts as failing (``--fail-on``)."""


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

    Ctrl-C and SIGTERM are handled by :mod:`linumpy_motor.interrupts` while it runs: they can not be
    swallowed, and end the command with one line whenever they arrive before it returns. With ``argv``
    None (the process's own command line, about to exit) signals change nothing once the outcome is
    settled, and an interrupted command ends the process at once (:func:`.interrupts.end_process`); with
    ``argv`` given (a call in-process) the caller's signal handling is put back.

    Returns
    -------
    int
        0 on success (or the code ``action`` returns, e.g. :data:`EXIT_NOT_OK`); :data:`EXIT_BAD_INPUT` on
        bad input (``InputError``, ``FitError``, a failed validation, a file that cannot be read or
        written; any other error is a bug and keeps its traceback); :data:`~linumpy_motor.errors.EXIT_NO_MEMORY`
        when a step does not fit the memory it may use; :data:`EXIT_INTERRUPTED` when
        interrupted (Ctrl-C), :data:`EXIT_TERMINATED` when terminated (SIGTERM to this process): either way
        the work in progress is cleaned up and a rerun resumes.
    """
    installed = interrupts.install()
    memory.limit_arenas()
    try:
        try:
            args = parser.parse_args(argv)
            bars = False if getattr(args, "no_progress", False) else None
            with logs.configured(args.log_level, debug=args.debug, bars=bars):
                code, said = _run_action(parser, action, args)
        except KeyboardInterrupt as exc:  # while parsing, or setting up or restoring the logging
            code, said = _interrupted(parser, exc, debug=False), True
        late = interrupts.finish()
        if late is not None and not said:  # after the last safe point, before the command's end
            code = _interrupted(parser, None, debug=False)
    finally:
        if argv is not None and installed:
            interrupts.restore()
    if argv is None and code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        interrupts.end_process(code)
    return code


def _interrupted(parser: argparse.ArgumentParser, exc: BaseException | None, debug: bool) -> int:
    """Print the one line of an interruption (Ctrl-C or SIGTERM) and return its exit code."""
    stop = interrupts.outcome(exc)
    code, words = stop if stop is not None else (EXIT_INTERRUPTED, "interrupted (rerun to resume)")
    if debug and exc is not None:
        traceback.print_exception(exc)
    print(f"{parser.prog}: {words}", file=sys.stderr)
    return code


BAD_INPUT_ERRORS = (InputError, FitError, ValidationError, OSError)
"""The errors reported in one line with :data:`EXIT_BAD_INPUT` (:data:`~linumpy_motor.errors.EXIT_NO_MEMORY` for
:class:`~linumpy_motor.errors.OutOfMemory`; any other error is a bug and keeps its traceback)."""


def stopped_by(exc: BaseException) -> tuple[str, int | None]:
    """What stopped a command, as its last line on stderr says it (after ``PROG: ``), and the exit status
    :func:`run_cli` gives it (None: a bug, which keeps its traceback)."""
    if isinstance(exc, Terminated):  # SIGTERM
        return "terminated (rerun to resume)", EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C
        return "interrupted (rerun to resume)", EXIT_INTERRUPTED
    return f"error: {_one_line(exc)}", exit_code(exc) if isinstance(exc, BAD_INPUT_ERRORS) else None


def _run_action(parser: argparse.ArgumentParser, action: Callable[[argparse.Namespace], int | None],
                args: argparse.Namespace) -> tuple[int, bool]:
    """Run ``action``; return the exit code and whether its one line (error or interruption) was printed."""
    try:
        interrupts.check()  # a Ctrl-C or SIGTERM during the imports or the set-up
        code = action(args)
        interrupts.check()
    except BaseException as exc:
        if interrupts.outcome(exc) is not None:  # any error raised while stopping is the stop itself
            return _interrupted(parser, exc, args.debug), True
        if memory.is_out_of_memory(exc):
            exc = memory.out_of_memory(None, None, exc)
        elif not isinstance(exc, BAD_INPUT_ERRORS):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"{parser.prog}: error: {_one_line(exc)}", file=sys.stderr)
        return exit_code(exc), True
    return code or 0, False


def _one_line(exc: BaseException) -> str:
    """A one-line description of an error (the first problem of a pydantic validation error); control
    characters in it (a newline in a file name) are written as escapes (:func:`~linumpy_motor.errors.printable`)."""
    if isinstance(exc, ValidationError):
        return printable(first_problem(exc))
    if isinstance(exc, OSError) and exc.filename:
        return printable(f"{exc.filename}: {exc.strerror or exc}")
    if isinstance(exc, InputError):
        return str(exc)
    text = str(exc).strip()
    return printable(text.splitlines()[0]) if text else type(exc).__name__
