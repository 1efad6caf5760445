#!/usr/bin/env python3
"""Measure the neighbour-tile displacements of one slice (sub-pixel phase correlation) into a pairs JSON."""

import sys

from linumpy_motor.pipeline import steps
from linumpy_motor.pipeline.entry import add_threads_argument, make_parser, overlap_fraction, run_cli
from linumpy_motor.pipeline.logs import Progress
from linumpy_motor.register.planes import PLANE_MODES


def build_parser():
    parser = make_parser("linum_motor_measure_pairs.py", __doc__)
    parser.add_argument("slice", help="mosaic grid of one slice (*.ome.zarr, NGFF 0.4 or 0.5)")
    parser.add_argument("output", help="pairs JSON to write (e.g. slice_z07_pairs.json)")
    parser.add_argument("--slice-id", type=int, help="slice id (default: the number in the store name)")
    parser.add_argument("--overlap", type=overlap_fraction, default=0.2, help="nominal tile overlap")
    parser.add_argument("--z", type=int, help="Z plane to measure (default: chosen by --plane)")
    parser.add_argument("--plane", default="auto", choices=PLANE_MODES,
                        help="without --z: the plane whose overlaps correlate best (auto), the central plane, "
                             "or the mean over planes")
    parser.add_argument("--flatfield", default="estimate",
                        help="divide tiles by this flat field before measuring: 'estimate' (from the slice's "
                             "tissue tiles), 'none', or a .npy flat field")
    parser.add_argument("--no-background-test", action="store_true",
                        help="keep pairs whose correlation is no better than that of non-overlapping windows")
    parser.add_argument("--max-shift", type=float, help="largest stage error searched, px (default: 10%% of a tile)")
    parser.add_argument("--histogram-match", action="store_true", help="match overlap histograms first")
    parser.add_argument("--max-empty-fraction", type=float,
                        help="skip pairs whose overlap is more than this fraction background (Otsu)")
    parser.add_argument("--use-gpu", action="store_true", help="run the FFTs on a CUDA GPU if one is usable")
    add_threads_argument(parser)
    return parser


def measure(args) -> None:
    content = steps.measure_pairs(
        args.slice, args.output, overlap=args.overlap, slice_id=args.slice_id, z=args.z, plane=args.plane,
        flatfield=args.flatfield, background_test=not args.no_background_test, max_shift_px=args.max_shift,
        histogram_match=args.histogram_match, max_empty_fraction=args.max_empty_fraction, use_gpu=args.use_gpu,
        progress=Progress(f"measure {args.slice}", "tile row"), threads=args.threads,
    )
    stats = content["stats"]
    print(f"slice {content['slice_id']}: {stats['n_measured']} pairs measured on plane "
          f"{'mean' if content['z'] is None else content['z']}, {stats['n_skipped_empty']} empty and "
          f"{stats['n_skipped_background']} background pairs skipped, backend {stats['backend']} -> {args.output}",
          file=sys.stderr)


def main(argv=None) -> int:
    return run_cli(build_parser(), measure, argv)


if __name__ == "__main__":
    sys.exit(main())
