#!/usr/bin/env python3
"""Pool the pairs of all slices and fit one global 2x2 motor matrix (robust weighted least squares)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from linumpy_motor.pipeline import options, steps
from linumpy_motor.pipeline.entry import make_parser, run_cli


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    parser = make_parser("linum_motor_fit_affine.py", __doc__)
    parser.add_argument("pairs", nargs="+", help="pairs JSON of each slice")
    parser.add_argument("--out", required=True, help="motor transform JSON to write")
    options.add_options(parser, options.FIT)
    return parser


def fit(args: argparse.Namespace) -> None:
    """Fit and write the motor model (:func:`~linumpy_motor.pipeline.steps.fit_affine`) and summarise it on stderr."""
    content = steps.fit_affine(args.pairs, args.out, n_samples=args.n_samples, seed=args.seed,
                               drift_tolerance_px=args.drift_tolerance, backlash=args.backlash)
    d = content["diagnostics"]
    backlash = "({:.2f}, {:.2f}) px".format(*content["backlash"]) if any(content["backlash"]) else "none"
    print(f"theta {d['theta_deg']:.3f} deg, phi {d['phi_deg']:.3f} deg, {d['n_inliers']} inliers / "
          f"{d['n_outliers']} outliers, residual RMS {d['residual_rms_px']:.3f} px; backlash "
          f"{backlash}; drifting slices: "
          f"{d['drifting_slices'] or 'none'} -> {args.out}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, EXIT_BAD_INPUT on bad input (too few usable pairs included)."""
    return run_cli(build_parser(), fit, argv)


if __name__ == "__main__":
    sys.exit(main())
