#!/usr/bin/env python3
"""Write the QC report of a run: per-slice trust status, the motor model, residual plots, thumbnails."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from linumpy_motor.pipeline.entry import make_parser, run_cli
from linumpy_motor.qc import report
from linumpy_motor.qc.report import write_report


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    parser = make_parser("linum_motor_report.py", __doc__)
    parser.add_argument("--transform", required=True, help="motor_transform.json")
    parser.add_argument("--pairs", nargs="*", default=[], help="per-slice *_pairs.json files")
    parser.add_argument("--compare", nargs="*", default=[], help="per-slice *_compare.json files")
    parser.add_argument("--stitched", nargs="*", default=[], help="stitched slices (*.ome.zarr)")
    parser.add_argument("--out", required=True,
                        help="report folder (an existing one is replaced only when this program wrote it)")
    parser.add_argument("--title", default=report.DEFAULT_TITLE, help="page title")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, EXIT_BAD_INPUT on bad input."""
    def action(args: argparse.Namespace) -> None:
        page = write_report(args.out, args.transform, args.pairs, args.compare, args.stitched, title=args.title)
        print(page)

    return run_cli(build_parser(), action, argv)


if __name__ == "__main__":
    sys.exit(main())
