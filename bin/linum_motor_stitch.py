#!/usr/bin/env python3
"""Stitch one slice with the motor model: flat-field correction, sub-pixel placement at A @ [i, j],
blended overlaps, written as an OME-Zarr with a multiscale pyramid (float32)."""

import sys

import numpy as np

from linumpy_motor import schemas
from linumpy_motor.blend import BLENDING_MODES
from linumpy_motor.entry import make_parser, run_cli
from linumpy_motor.errors import InputError
from linumpy_motor.stitch import stitch_slice


def build_parser():
    parser = make_parser("linum_motor_stitch.py", __doc__)
    parser.add_argument("slice_zarr", help="the slice's mosaic grid (*.ome.zarr)")
    parser.add_argument("transform_json", help="motor_transform.json from linum_motor_fit_affine.py")
    parser.add_argument("out_zarr", help="stitched slice to write (*.ome.zarr)")
    parser.add_argument("--blending", default="feather", choices=BLENDING_MODES, help="how overlaps are combined")
    parser.add_argument("--flatfield", default="estimate",
                        help="'estimate' (from the slice's tissue tiles), 'none', or a .npy flat field")
    parser.add_argument("--ngff-version", default="0.5", choices=("0.4", "0.5"), help="output format")
    parser.add_argument("--z-chunk", type=int, help="Z planes per block and output chunk (default: automatic)")
    parser.add_argument("--use-gpu", action="store_true", help="accumulate on a CUDA GPU (falls back to CPU)")
    return parser


def stitch(args) -> None:
    transform = np.asarray(schemas.load(args.transform_json, schemas.TransformFile).transform)
    try:
        summary = stitch_slice(args.slice_zarr, args.out_zarr, transform, blending=args.blending,
                               flatfield=args.flatfield, ngff_version=args.ngff_version, z_chunk=args.z_chunk,
                               use_gpu=args.use_gpu, progress=sys.stderr.isatty())
    except InputError as exc:  # a problem of the matrix itself (e.g. its canvas): name the file it came from
        if exc.path is None:
            raise InputError(args.transform_json, exc.problem) from None
        raise
    print(f"{summary['shape']} float32, {len(summary['levels'])} levels, {summary['backend']}, "
          f"{summary['seconds']:.1f} s -> {args.out_zarr}", file=sys.stderr)


def main(argv=None) -> int:
    return run_cli(build_parser(), stitch, argv)


if __name__ == "__main__":
    sys.exit(main())
