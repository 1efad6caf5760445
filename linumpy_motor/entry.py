"""What every command-line entry point shares: version flag, logging, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from . import __version__
from .errors import InputError
from .fit import FitError

EXIT_BAD_INPUT = 2


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--version`` and ``--debug``."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{prog} (linumpy-motor) {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    return parser


def run_cli(parser: argparse.ArgumentParser, action: Callable[[argparse.Namespace], None],
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``action`` and turn bad input into one line on stderr and exit code 2.

    Returns
    -------
    int
        0 on success, 2 on bad input (``InputError``, ``ValueError``, a failed validation).
    """
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        action(args)
    except (InputError, FitError, ValidationError, ValueError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def overlap_fraction(text: str) -> float:
    """argparse type: an overlap fraction in (0, 0.5)."""
    value = float(text)
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"overlap must be in (0, 0.5), got {value}")
    return value
