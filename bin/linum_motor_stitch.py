#!/usr/bin/env python3
"""Stitch one slice with the motor model: flat-field correction, sub-pixel placement at A @ [i, j],
blended overlaps, written as an OME-Zarr with a multiscale pyramid (float32)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import PositiveInt

from linumpy_motor.errors import InputError
from linumpy_motor.io import schemas
from linumpy_motor.io.grid import open_mosaic
from linumpy_motor.io.outputs import check_output
from linumpy_motor.pipeline import options, steps
from linumpy_motor.pipeline.entry import make_parser, run_cli
from linumpy_motor.pipeline.logs import Progress
from linumpy_motor.stitch.assemble import stitch_slice
from linumpy_motor.stitch.plan import CACHE_BYTES


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    parser = make_parser("linum_motor_stitch.py", __doc__)
    parser.add_argument("slice_zarr", help="the slice's mosaic grid (*.ome.zarr)")
    parser.add_argument("transform_json", help="motor_transform.json from linum_motor_fit_affine.py, a JSON "
                        "holding only 'transform', or upstream's 2x2 .npy (linum_estimate_transform.py)")
    parser.add_argument("out_zarr", help="stitched slice to write (*.ome.zarr)")
    options.add_options(parser, options.STITCH)
    parser.add_argument("--pairs", help="the slice's pairs JSON (for --placement registered)")
    parser.add_argument("--cache-mb", type=options.value_parser(PositiveInt, "cache_mb"), default=CACHE_BYTES // 2**20,
                        help="decoded tiles held at once, MB: with enough, each input chunk is decoded once "
                             "(peak memory is about this plus a few blocks per thread)")
    return parser


def stitch(args: argparse.Namespace) -> None:
    """Place and blend the slice's tiles (:func:`~linumpy_motor.stitch.assemble.stitch_slice`), write the store
    and summarise it on stderr; a problem of the matrix itself names the transform file. The output may be
    none of the inputs (checked before anything is read)."""
    check_output(args.out_zarr, args.slice_zarr, args.transform_json, *filter(None, [args.pairs]), stage="stitch")
    transform = schemas.read_transform(args.transform_json)
    grid = open_mosaic(args.slice_zarr)
    positions = steps.tile_positions(args.transform_json, (grid.nx, grid.ny), placement=args.placement,
                                     pairs_file=args.pairs)
    try:
        summary = stitch_slice(grid, args.out_zarr, transform, positions=positions, blending=args.blending,
                               flatfield=args.flatfield, ngff_version=args.ngff_version, z_chunk=args.z_chunk,
                               use_gpu=args.use_gpu, progress=Progress(f"stitch {args.out_zarr}", "block"),
                               threads=args.threads, cache_bytes=args.cache_mb * 2**20)
    except InputError as exc:  # a problem of the matrix itself (e.g. its canvas): name the file it came from
        if exc.path is None:
            raise InputError(args.transform_json, exc.problem) from None
        raise
    print(f"{summary['shape']} float32, {len(summary['levels'])} levels, {summary['backend']}, "
          f"{summary['seconds']:.1f} s -> {args.out_zarr}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, EXIT_BAD_INPUT on bad input."""
    return run_cli(build_parser(), stitch, argv)


if __name__ == "__main__":
    sys.exit(main())
