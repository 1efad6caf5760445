#!/usr/bin/env python3
"""Measure the neighbour-tile displacements of one slice (sub-pixel phase correlation) into a pairs JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from linumpy_motor.pipeline import options, steps
from linumpy_motor.pipeline.entry import make_parser, run_cli
from linumpy_motor.pipeline.logs import Progress


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    parser = make_parser("linum_motor_measure_pairs.py", __doc__)
    parser.add_argument("slice", help="mosaic grid of one slice (*.ome.zarr, NGFF 0.4 or 0.5)")
    parser.add_argument("output", help="pairs JSON to write (e.g. slice_z07_pairs.json)")
    parser.add_argument("--slice-id", type=int, help="slice id (default: the number in the store name)")
    parser.add_argument("--flatfield-out", metavar="DIR",
                        help="also write the flat field the slice is measured with (estimated, given, or ones for "
                             "'none') as DIR/flatfield.npy, for the stitch's --flatfield (e.g. slice_z07_flatfield)")
    options.add_options(parser, options.MEASURE)
    return parser


def measure(args: argparse.Namespace) -> None:
    """Measure and write the pairs (:func:`~linumpy_motor.pipeline.steps.measure_pairs`) and count them on stderr."""
    content = steps.measure_pairs(
        args.slice, args.output, overlap=args.overlap, slice_id=args.slice_id, z=args.z, plane=args.plane,
        flatfield=args.flatfield, background_test=args.background_test, max_shift_px=args.max_shift,
        histogram_match=args.histogram_match, max_empty_fraction=args.max_empty_fraction, use_gpu=args.use_gpu,
        progress=Progress(f"measure {args.slice}", "tile row"), threads=args.threads,
        flatfield_output=args.flatfield_out,
    )
    stats = content["stats"]
    print(f"slice {content['slice_id']}: {stats['n_measured']} pairs measured on plane "
          f"{'mean' if content['z'] is None else content['z']} ({stats['n_background']} no better than chance), "
          f"{stats['n_skipped_empty']} empty pairs skipped, backend {stats['backend']} -> {args.output}",
          file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, EXIT_BAD_INPUT on bad input."""
    return run_cli(build_parser(), measure, argv)


if __name__ == "__main__":
    sys.exit(main())
