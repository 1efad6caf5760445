#!/usr/bin/env python3
"""List the slices of a QC report that are not ok; exit with a non-zero code when --fail-on counts them as failing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from linumpy_motor.pipeline import options
from linumpy_motor.pipeline.entry import EXIT_NOT_OK, make_parser, run_cli
from linumpy_motor.qc import summary


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    parser = make_parser("linum_motor_qc.py", __doc__)
    parser.add_argument("report", help="report folder written by linum_motor_report.py (reads its status.json)")
    options.add_fail_on(parser, EXIT_NOT_OK)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 when no slice fails, EXIT_NOT_OK when one does, EXIT_BAD_INPUT on bad input."""
    def action(args: argparse.Namespace) -> int:
        status = summary.read_status(args.report)
        print("\n".join(summary.status_lines(status)))
        return summary.exit_code(status, args.fail_on, EXIT_NOT_OK)

    return run_cli(build_parser(), action, argv)


if __name__ == "__main__":
    sys.exit(main())
