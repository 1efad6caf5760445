"""The options of a run, defined once: names, defaults, bounds, choices and help.

:class:`RunOptions` owns them. ``linumpy-motor run`` and the ``bin/`` scripts add their command-line
options with :func:`add_options`, which reads each option's default, bounds and choices from
:class:`RunOptions`. The Nextflow params (``nextflow.config``, ``nextflow_schema.json``) carry the same
names and are tested equal to it (``tests/test_nextflow_schema.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from linumpy_motor.io.ngff import DEFAULT_NGFF_VERSION, NgffVersion
from linumpy_motor.io.schemas import DEFAULT_OVERLAP, Overlap, first_problem
from linumpy_motor.pipeline.steps import DEFAULT_PLACEMENT, Placement
from linumpy_motor.qc.summary import FAIL_ON
from linumpy_motor.register.correlation import MAX_SHIFT_DEFAULT_TEXT
from linumpy_motor.register.fit import DEFAULT_BACKLASH, DRIFT_TOLERANCE_PX, BacklashMode
from linumpy_motor.register.flatfield import DEFAULT_FLATFIELD
from linumpy_motor.register.planes import DEFAULT_PLANE, PlaneMode
from linumpy_motor.stitch.assemble import BLOCK_BYTES
from linumpy_motor.stitch.blend import BLENDING_HELP, DEFAULT_BLENDING, BlendingMode

__all__ = ["FIT", "HELP", "MEASURE", "STITCH", "RunOptions", "add_fail_on", "add_options", "from_arguments",
           "value_parser"]


class RunOptions(BaseModel):
    """Parameters of a run (the same names and defaults as the Nextflow params)."""

    model_config = ConfigDict(extra="forbid")
    overlap: Overlap = DEFAULT_OVERLAP
    z: int | None = Field(None, ge=0)
    plane: PlaneMode = DEFAULT_PLANE
    background_test: bool = True
    max_shift: float | None = Field(None, gt=0)
    histogram_match: bool = False
    max_empty_fraction: float | None = Field(None, ge=0, le=1)
    n_samples: int | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    drift_tolerance: float = Field(DRIFT_TOLERANCE_PX, gt=0)
    backlash: BacklashMode = DEFAULT_BACKLASH
    placement: Placement = DEFAULT_PLACEMENT
    blending: BlendingMode = DEFAULT_BLENDING
    flatfield: str = DEFAULT_FLATFIELD
    ngff_version: NgffVersion = DEFAULT_NGFF_VERSION
    transform: Path | None = None
    workers: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)
    use_gpu: bool = False
    z_chunk: int | None = Field(None, ge=1)


HELP = {
    "overlap": "nominal tile overlap, a fraction of the tile (not stored in the files)",
    "z": "Z plane measured (default: chosen by --plane)",
    "plane": "without --z: the plane whose overlaps correlate best (auto), the central plane, or the mean over "
             "planes",
    "background_test": "the background test, on unless --no-background-test: it marks, in the pairs files and the "
                       "report, the pairs that correlate no better than windows that do not overlap (agarose, empty "
                       "overlaps, decorrelated speckle); every pair goes to the robust fit either way",
    "max_shift": f"largest stage error searched, px (default: {MAX_SHIFT_DEFAULT_TEXT})",
    "histogram_match": "match the overlaps' histograms before correlating",
    "max_empty_fraction": "skip pairs whose overlap is more than this fraction background (Otsu)",
    "n_samples": "fit a reproducible random subset of this many pooled pairs",
    "seed": "seed of that subset",
    "drift_tolerance": "flag slices whose own model moves a tile more than this (px) from the pooled one",
    "backlash": "serpentine backlash term of the model: when the data need it (auto), always, never",
    "placement": "tiles at the model's positions (with its backlash term), or at the model plus each tile's "
                 "registered residual",
    "blending": BLENDING_HELP,
    "flatfield": "'estimate' (from each slice's tissue tiles), 'none', or a .npy flat field; applied before "
                 "measuring and when stitching",
    "ngff_version": "stitched output format",
    "transform": "known motor model: our transform JSON, a JSON holding only 'transform', or upstream's 2x2 .npy; "
                 "skips measuring and fitting",
    "workers": "slices processed in parallel",
    "threads": "cores to use (default: the cores this process may run on, per CPU affinity and cgroup quota; "
               "Nextflow passes task.cpus)",
    "use_gpu": "use a CUDA GPU (CuPy) when one is usable, else the CPU",
    "z_chunk": "Z planes per stitched block and output chunk (default: the input's Z chunk, capped at "
               f"{BLOCK_BYTES // 2**20} MiB "
               "per block)",
}
"""One help text per option of :class:`RunOptions` (a boolean's text says what its flag does)."""
MEASURE = ("overlap", "z", "plane", "flatfield", "background_test", "max_shift", "histogram_match",
           "max_empty_fraction", "use_gpu", "threads")
"""The options of measuring one slice."""
FIT = ("n_samples", "seed", "drift_tolerance", "backlash")
"""The options of the pooled fit."""
STITCH = ("placement", "blending", "flatfield", "ngff_version", "z_chunk", "use_gpu", "threads")
"""The options of stitching one slice."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def value_parser(annotation: Any, name: str = "value") -> Callable[[str], Any]:
    """An argparse type that parses and checks a value as pydantic does for ``annotation`` (e.g. ``PositiveInt``),
    a problem being one line (:func:`~linumpy_motor.io.schemas.first_problem`)."""
    adapter: TypeAdapter = TypeAdapter(annotation)

    def parse(text: str) -> Any:
        try:
            return adapter.validate_strings(text)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(_in_words(exc, text)) from None

    parse.__name__ = name
    return parse


_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}
_KINDS = {"int_parsing": "a whole number", "int_from_float": "a whole number", "float_parsing": "a number"}


def _in_words(exc: ValidationError, text: str) -> str:
    """A command-line value's problem as a person says it (``must be at least 1, got 0``), pydantic's own
    words (:func:`~linumpy_motor.io.schemas.first_problem`) for the rest."""
    error = exc.errors()[0]
    if error["type"] in _BOUNDS:
        key, words = _BOUNDS[error["type"]]
        return f"must be {words} {error.get('ctx', {}).get(key):g}, got {text}"
    if error["type"] in _KINDS:
        return f"must be {_KINDS[error['type']]}, got {text!r}"
    return first_problem(exc)


def _parser_of(name: str) -> Callable[[str], Any]:
    """An argparse type that parses and checks a value as :class:`RunOptions` does for ``name``."""
    field = RunOptions.model_fields[name]
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return value_parser(annotation, name)


def add_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add the command-line options of these :class:`RunOptions` fields to ``parser``.

    A field ``max_shift`` becomes ``--max-shift``; a boolean that defaults to true becomes ``--no-NAME``
    (e.g. ``--no-background-test``), one that defaults to false ``--NAME``; a ``Literal`` field lists
    its choices. Defaults and bounds are the model's.
    """
    for name in names:
        field = RunOptions.model_fields[name]
        text = HELP[name].replace("%", "%%")  # argparse formats help with %
        if field.annotation is bool:
            flag = f"--no-{name.replace('_', '-')}" if field.default else _flag(name)
            parser.add_argument(flag, dest=name, action="store_false" if field.default else "store_true",
                                help=text)
            continue
        if get_origin(field.annotation) is Literal:  # argparse checks the choices and lists them
            parser.add_argument(_flag(name), default=field.default, choices=get_args(field.annotation),
                                help=text)
        else:
            parser.add_argument(_flag(name), type=_parser_of(name), default=field.default, help=text)


def add_fail_on(parser: argparse.ArgumentParser, exit_code: int) -> None:
    """``--fail-on``: which slice statuses make the command exit with ``exit_code``."""
    parser.add_argument("--fail-on", choices=FAIL_ON, default=FAIL_ON[0],
                        help=f"exit with code {exit_code} when a slice's QC status is 'failed' (failed) or "
                             "anything but 'ok' (check); those slices are listed either way")


def from_arguments(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of parsed arguments (the fields ``args`` does not hold keep their defaults)."""
    return RunOptions(**{name: getattr(args, name) for name in RunOptions.model_fields if hasattr(args, name)})
