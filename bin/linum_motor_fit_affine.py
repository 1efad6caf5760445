#!/usr/bin/env python3
"""Pool the pairs of all slices and fit one global 2x2 motor matrix (robust weighted least squares)."""

import sys

from linumpy_motor.pipeline import steps
from linumpy_motor.pipeline.entry import make_parser, run_cli
from linumpy_motor.register.fit import BACKLASH_MODES


def build_parser():
    parser = make_parser("linum_motor_fit_affine.py", __doc__)
    parser.add_argument("pairs", nargs="+", help="pairs JSON of each slice")
    parser.add_argument("--out", required=True, help="motor transform JSON to write")
    parser.add_argument("--n-samples", type=int, help="fit a reproducible random subset of this many pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset")
    parser.add_argument("--drift-tolerance", type=float, default=1.0,
                        help="flag a slice whose own model moves a tile more than this (px) from the pooled one")
    parser.add_argument("--backlash", default="auto", choices=BACKLASH_MODES,
                        help="serpentine backlash term of the model: when the data need it (auto), always, never")
    return parser


def fit(args) -> None:
    content = steps.fit_affine(args.pairs, args.out, n_samples=args.n_samples, seed=args.seed,
                               drift_tolerance_px=args.drift_tolerance, backlash=args.backlash)
    d = content["diagnostics"]
    backlash = "({:.2f}, {:.2f}) px".format(*content["backlash"]) if any(content["backlash"]) else "none"
    print(f"theta {d['theta_deg']:.3f} deg, phi {d['phi_deg']:.3f} deg, {d['n_inliers']} inliers / "
          f"{d['n_outliers']} outliers, residual RMS {d['residual_rms_px']:.3f} px; backlash "
          f"{backlash}; drifting slices: "
          f"{d['drifting_slices'] or 'none'} -> {args.out}", file=sys.stderr)


def main(argv=None) -> int:
    return run_cli(build_parser(), fit, argv)


if __name__ == "__main__":
    sys.exit(main())
