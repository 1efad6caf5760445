#!/usr/bin/env python3
"""Write a synthetic OCT-like dataset (mosaic grids with a known motor model) and truth.json."""

import sys

from linumpy_motor.pipeline.cli import add_synth_arguments, synth
from linumpy_motor.pipeline.entry import make_parser, run_cli


def build_parser():
    parser = make_parser("linum_motor_synth.py", __doc__)
    add_synth_arguments(parser)
    return parser


def main(argv=None) -> int:
    return run_cli(build_parser(), synth, argv)


if __name__ == "__main__":
    sys.exit(main())
