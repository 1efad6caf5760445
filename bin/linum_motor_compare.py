#!/usr/bin/env python3
"""Compare one slice's motor-model tile positions with its registration (pair least-squares) positions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from linumpy_motor.pipeline import steps
from linumpy_motor.pipeline.entry import make_parser, run_cli


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    parser = make_parser("linum_motor_compare.py", __doc__)
    parser.add_argument("pairs", help="pairs JSON of the slice")
    parser.add_argument("transform", help="motor transform JSON")
    parser.add_argument("--out", required=True, help="comparison JSON to write")
    return parser


def compare(args: argparse.Namespace) -> None:
    """Write the comparison (:func:`~linumpy_motor.pipeline.steps.compare`) and say its RMS and max on stderr."""
    content = steps.compare(args.pairs, args.transform, args.out)
    print(f"slice {content['slice_id']}: rms {content['rms_diff_px']:.3f} px, max {content['max_diff_px']:.3f} px "
          f"-> {args.out}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, EXIT_BAD_INPUT on bad input."""
    return run_cli(build_parser(), compare, argv)


if __name__ == "__main__":
    sys.exit(main())
