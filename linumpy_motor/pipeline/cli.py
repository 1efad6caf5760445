"""linumpy-motor: synthesise a dataset, or run the whole stage on one machine."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from linumpy_motor import synthetic
from linumpy_motor.io import ngff
from linumpy_motor.io.schemas import Overlap
from linumpy_motor.pipeline import logs, runner
from linumpy_motor.pipeline.entry import EXIT_NOT_OK, HelpFormatter, make_parser, run_cli
from linumpy_motor.pipeline.launch import PROG
from linumpy_motor.pipeline.options import RunOptions, add_fail_on, add_options, from_arguments, value_parser
from linumpy_motor.qc import summary

__all__ = ["add_run_arguments", "add_synth_arguments", "build_parser", "main", "run", "synth"]


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``linumpy-motor synth`` (shared with ``bin/linum_motor_synth.py``)."""
    defaults = synthetic.SyntheticSpec()
    parser.add_argument("outdir", help="folder to write the slices and truth.json into")
    parser.add_argument("--slices", type=int, default=synthetic.N_SLICES, help="number of slices")
    parser.add_argument("--grid", type=int, nargs=2, metavar=("NX", "NY"), default=(defaults.nx, defaults.ny),
                        help="tile rows and columns")
    parser.add_argument("--tile", type=int, nargs=3, metavar=("Z", "H", "W"), default=defaults.tile_shape,
                        help="tile shape")
    parser.add_argument("--overlap", type=value_parser(Overlap, "overlap"), default=defaults.overlap,
                        help="tile overlap")
    parser.add_argument("--theta", type=float, default=defaults.theta_deg, help="scan-to-stage rotation (deg)")
    parser.add_argument("--phi-deviation", type=float, default=defaults.perpendicular_deviation_deg,
                        help="deviation of the motor axes from perpendicular (deg)")
    parser.add_argument("--jitter", type=float, default=defaults.jitter_px, help="per-tile position jitter (px)")
    parser.add_argument("--noise", type=float, default=defaults.noise, help="noise, fraction of the tissue signal")
    parser.add_argument("--tissue-fraction", type=float, default=defaults.tissue_fraction,
                        help="fraction of the slice covered by tissue")
    parser.add_argument("--bad-tiles", type=int, default=defaults.bad_tiles,
                        help="tiles replaced by background or another tile")
    parser.add_argument("--dtype", default=defaults.dtype, choices=synthetic.DTYPES,
                        help="sample type of the slices (complex64: a random phase on the magnitude)")
    parser.add_argument("--ngff-version", default=ngff.DEFAULT_NGFF_VERSION, choices=ngff.NGFF_VERSIONS,
                        help="store format: 0.5 (zarr v3) or 0.4 (zarr v2)")
    parser.add_argument("--no-shards", action="store_true", help="write NGFF 0.5 without sharding")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")


def synth(args: argparse.Namespace) -> None:
    """Write the synthetic dataset described by ``args``."""
    spec = synthetic.SyntheticSpec(
        nx=args.grid[0], ny=args.grid[1], tile_shape=tuple(args.tile), overlap=args.overlap, theta_deg=args.theta,
        perpendicular_deviation_deg=args.phi_deviation, jitter_px=args.jitter, noise=args.noise,
        tissue_fraction=args.tissue_fraction, bad_tiles=args.bad_tiles, dtype=args.dtype, seed=args.seed,
    )
    synthetic.write_dataset(args.outdir, spec, n_slices=args.slices, ngff_version=args.ngff_version,
                            sharded=not args.no_shards)
    print(f"wrote {logs.plural(args.slices, 'synthetic slice')} and truth.json to {args.outdir}")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``linumpy-motor run``: every :class:`~linumpy_motor.pipeline.options.RunOptions` field."""
    parser.add_argument("input", help="folder of *.ome.zarr slices, or a CSV samplesheet 'slice_id,path'")
    parser.add_argument("outdir", help="output folder (pairs/, motor_transform.json, stitched/, compare/, report/)")
    add_options(parser, RunOptions.model_fields)
    parser.add_argument("--no-progress", action="store_true",
                        help="progress as log lines, never bars (bars are shown only when stderr is a terminal)")
    add_fail_on(parser, EXIT_NOT_OK)


def run(args: argparse.Namespace) -> int:
    """Run the whole stage on one machine and say where the results are (on stdout and in the run's log)."""
    result = runner.run(args.input, args.outdir, from_arguments(args), progress=not args.no_progress)
    lines = list(runner.describe(result))
    print("\n".join(lines))
    code = summary.exit_code(result.get("status"), args.fail_on, EXIT_NOT_OK)
    with logs.log_file(result["outdir"]):  # the log keeps the outcome, which stdout alone would carry
        for line in [*lines, f"exit status {code}"]:
            logs.to_file_only(logging.INFO, line)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The ``linumpy-motor`` parser with its sub-commands."""
    parser = make_parser(PROG, __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    synth_parser = commands.add_parser("synth", help="write a synthetic dataset with known truth",
                                       formatter_class=HelpFormatter)
    add_synth_arguments(synth_parser)
    logs.add_arguments(synth_parser, sub=True)
    synth_parser.set_defaults(action=synth)
    run_parser = commands.add_parser("run", help="run measure, fit, stitch, compare and report on one machine",
                                     formatter_class=HelpFormatter)
    add_run_arguments(run_parser)
    logs.add_arguments(run_parser, sub=True)
    run_parser.set_defaults(action=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``linumpy-motor``."""
    parser = build_parser()
    return run_cli(parser, lambda args: args.action(args), argv)
