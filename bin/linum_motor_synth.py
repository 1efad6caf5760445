#!/usr/bin/env python3
"""Write a synthetic OCT-like dataset (mosaic grids with a known motor model) and truth.json."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from linumpy_motor.pipeline.cli import add_synth_arguments, synth
from linumpy_motor.pipeline.entry import make_parser, run_cli


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    parser = make_parser("linum_motor_synth.py", __doc__)
    add_synth_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command (:func:`~linumpy_motor.pipeline.cli.synth`); 0 on success, EXIT_BAD_INPUT on bad input."""
    return run_cli(build_parser(), synth, argv)


if __name__ == "__main__":
    sys.exit(main())
