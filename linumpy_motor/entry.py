"""What every command-line entry point shares: version flag, logging, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from . import __version__
from .errors import InputError
from .fit import FitError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit code 2), like every other error."""

    def error(self, message: str):
        """Print ``prog: error: message`` and exit with code 2."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--version`` and ``--debug``, reporting usage errors in one line."""
    parser = OneLineErrorParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{prog} (linumpy-motor) {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    return parser


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: the cores a command may use (default: those this process is given)."""
    parser.add_argument("--threads", type=positive_int,
                        help="cores to use (default: the cores this process may run on, per CPU affinity "
                             "and cgroup quota; Nextflow passes task.cpus)")


def run_cli(parser: argparse.ArgumentParser, action: Callable[[argparse.Namespace], None],
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``action`` and turn bad input into one line on stderr and exit code 2.

    Returns
    -------
    int
        0 on success, 2 on bad input (``InputError``, ``ValueError``, a failed validation),
        130 when interrupted (Ctrl-C; a rerun resumes).
    """
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:  # zarr I/O tasks left pending by a failed read are reported by asyncio at exit
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    try:
        action(args)
    except (InputError, FitError, ValidationError, ValueError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{parser.prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"{parser.prog}: interrupted (rerun to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def one_line(exc: BaseException) -> str:
    """A one-line description of an error (the first problem of a pydantic validation error)."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"]
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def overlap_fraction(text: str) -> float:
    """argparse type: an overlap fraction in (0, 0.5)."""
    value = float(text)
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"overlap must be in (0, 0.5), got {value}")
    return value
