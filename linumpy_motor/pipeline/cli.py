"""``linumpy-motor``: synthesise a dataset, or run the whole stage on one machine."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from linumpy_motor import synthetic
from linumpy_motor.io import ngff
from linumpy_motor.pipeline import logs, runner
from linumpy_motor.pipeline.entry import (
    EXIT_NOT_OK,
    HelpFormatter,
    add_threads_argument,
    make_parser,
    overlap_fraction,
    run_cli,
)
from linumpy_motor.pipeline.runner import RunOptions
from linumpy_motor.pipeline.steps import PLACEMENTS
from linumpy_motor.qc import summary
from linumpy_motor.register.fit import BACKLASH_MODES
from linumpy_motor.register.planes import PLANE_MODES
from linumpy_motor.stitch.blend import BLENDING_HELP, BLENDING_MODES

__all__ = ["add_run_arguments", "add_synth_arguments", "build_parser", "main", "run", "synth"]


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``linumpy-motor synth`` (shared with ``bin/linum_motor_synth.py``)."""
    defaults = synthetic.SyntheticSpec()
    parser.add_argument("outdir", help="folder to write the slices and truth.json into")
    parser.add_argument("--slices", type=int, default=3, help="number of slices")
    parser.add_argument("--grid", type=int, nargs=2, metavar=("NX", "NY"), default=(defaults.nx, defaults.ny),
                        help="tile rows and columns")
    parser.add_argument("--tile", type=int, nargs=3, metavar=("Z", "H", "W"), default=defaults.tile_shape,
                        help="tile shape")
    parser.add_argument("--overlap", type=overlap_fraction, default=defaults.overlap, help="tile overlap")
    parser.add_argument("--theta", type=float, default=defaults.theta_deg, help="scan-to-stage rotation (deg)")
    parser.add_argument("--phi-deviation", type=float, default=defaults.perpendicular_deviation_deg,
                        help="deviation of the motor axes from perpendicular (deg)")
    parser.add_argument("--jitter", type=float, default=defaults.jitter_px, help="per-tile position jitter (px)")
    parser.add_argument("--noise", type=float, default=defaults.noise, help="noise, fraction of the tissue signal")
    parser.add_argument("--tissue-fraction", type=float, default=defaults.tissue_fraction,
                        help="fraction of the slice covered by tissue")
    parser.add_argument("--bad-tiles", type=int, default=0, help="tiles replaced by background or another tile")
    parser.add_argument("--dtype", default=defaults.dtype, choices=("float32", "uint8", "uint16", "complex64"))
    parser.add_argument("--ngff-version", default="0.5", choices=ngff.NGFF_VERSIONS)
    parser.add_argument("--no-shards", action="store_true", help="write NGFF 0.5 without sharding")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


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
    """Options of ``linumpy-motor run`` (names and defaults as the Nextflow params)."""
    defaults = RunOptions()
    parser.add_argument("input", help="folder of *.ome.zarr slices, or a CSV samplesheet 'slice_id,path'")
    parser.add_argument("outdir", help="output folder (pairs/, motor_transform.json, stitched/, compare/, report/)")
    parser.add_argument("--overlap", type=overlap_fraction, default=defaults.overlap, help="nominal tile overlap")
    parser.add_argument("--z", type=int, help="Z plane measured (default: chosen by --plane)")
    parser.add_argument("--plane", default=defaults.plane, choices=PLANE_MODES,
                        help="without --z: the plane whose overlaps correlate best (auto), the central plane, "
                             "or the mean over planes")
    parser.add_argument("--no-background-test", action="store_true",
                        help="keep pairs whose correlation is no better than that of non-overlapping windows")
    parser.add_argument("--max-shift", type=float, help="largest stage error searched, px (default: 10%% of a tile)")
    parser.add_argument("--histogram-match", action="store_true", help="match overlap histograms before correlating")
    parser.add_argument("--max-empty-fraction", type=float,
                        help="skip pairs whose overlap is more than this fraction background (Otsu)")
    parser.add_argument("--n-samples", type=int, help="fit a reproducible random subset of this many pooled pairs")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of that subset")
    parser.add_argument("--drift-tolerance", type=float, default=defaults.drift_tolerance,
                        help="flag slices whose own model moves a tile more than this (px) from the pooled one")
    parser.add_argument("--backlash", default=defaults.backlash, choices=BACKLASH_MODES,
                        help="serpentine backlash term of the model: when the data need it (auto), always, never")
    parser.add_argument("--placement", default=defaults.placement, choices=PLACEMENTS,
                        help="stitch tiles at the model's positions, or at the model plus each tile's registered "
                             "residual")
    parser.add_argument("--blending", default=defaults.blending, choices=BLENDING_MODES, help=BLENDING_HELP)
    parser.add_argument("--flatfield", default=defaults.flatfield,
                        help="'estimate' (from each slice's tissue tiles), 'none', or a .npy flat field; "
                             "applied before measuring and when stitching")
    parser.add_argument("--ngff-version", default=defaults.ngff_version, choices=ngff.NGFF_VERSIONS,
                        help="stitched output format")
    parser.add_argument("--transform", help="known motor model: our transform JSON, a JSON holding only "
                        "'transform', or upstream's 2x2 .npy; skips measuring and fitting")
    parser.add_argument("--z-chunk", type=int, help="Z planes per stitched block and output chunk "
                        "(default: the input's Z chunk, capped at ~16 MiB per block)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="slices processed in parallel")
    parser.add_argument("--use-gpu", action="store_true", help="use a CUDA GPU (CuPy) when one is usable")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true",
                        help="progress as log lines, never bars (bars are shown only when stderr is a terminal)")
    parser.add_argument("--fail-on", choices=summary.FAIL_ON, default="never",
                        help=f"exit with code {EXIT_NOT_OK} when a slice's QC status is 'failed' (failed) or "
                             "anything but 'ok' (check); the summary lists those slices either way")


def run(args: argparse.Namespace) -> int:
    """Run the whole stage on one machine and say where the results are."""
    options = RunOptions(
        overlap=args.overlap, z=args.z, plane=args.plane, background_test=not args.no_background_test,
        max_shift=args.max_shift, histogram_match=args.histogram_match,
        max_empty_fraction=args.max_empty_fraction, n_samples=args.n_samples, seed=args.seed,
        drift_tolerance=args.drift_tolerance, backlash=args.backlash, placement=args.placement,
        blending=args.blending, flatfield=args.flatfield,
        ngff_version=args.ngff_version, transform=args.transform, workers=args.workers, use_gpu=args.use_gpu,
        z_chunk=args.z_chunk, threads=args.threads,
    )
    result = runner.run(args.input, args.outdir, options, progress=not args.no_progress)
    print("\n".join(runner.describe(result)))
    return summary.exit_code(result.get("status"), args.fail_on, EXIT_NOT_OK)


def build_parser() -> argparse.ArgumentParser:
    """The ``linumpy-motor`` parser with its sub-commands."""
    parser = make_parser("linumpy-motor", __doc__)
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
