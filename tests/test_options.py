"""One owner for the options: RunOptions. The command lines take their names, defaults, bounds and choices
from it, and the library's own defaults agree with it."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
from pathlib import Path

import pytest
from pydantic import ValidationError

from linumpy_motor.pipeline import cli, options, steps
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.register import fit, measure
from linumpy_motor.stitch import assemble

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"linum_motor_measure_pairs.py": options.MEASURE, "linum_motor_fit_affine.py": options.FIT,
           "linum_motor_stitch.py": options.STITCH}


def _script_parser(name: str) -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO / "bin" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.add_run_arguments(parser)
    return parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions}


def test_run_offers_every_option_with_the_models_default():
    actions = _actions(_run_parser())
    for name, field in RunOptions.model_fields.items():
        assert name in actions, f"linumpy-motor run has no option for {name}"
        assert actions[name].default == field.default, name
        assert options.HELP[name], name


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_script_takes_its_step_options_from_the_model(script):
    actions = _actions(_script_parser(script))
    for name in SCRIPTS[script]:
        assert actions[name].default == RunOptions.model_fields[name].default, (script, name)
        assert actions[name].option_strings == _actions(_run_parser())[name].option_strings, (script, name)


def test_parsed_arguments_give_the_models_options():
    args = _run_parser().parse_args(["in", "out", "--overlap", "0.3", "--no-background-test", "--histogram-match",
                                     "--z", "2", "--blending", "diffusion", "--seed", "7"])
    assert options.from_arguments(args) == RunOptions(overlap=0.3, background_test=False, histogram_match=True, z=2,
                                                      blending="diffusion", seed=7)


VALUES = {"overlap": ["0", "0.1", "0.5", "0.51", "nan"], "z": ["-1", "0", "3", "1.5"],
          "max_shift": ["0", "-2", "3.5"], "max_empty_fraction": ["-0.1", "0", "1", "1.5"],
          "n_samples": ["0", "1", "-3"], "seed": ["-1", "0", "12"], "drift_tolerance": ["0", "0.5", "-1"],
          "workers": ["0", "1", "4"], "threads": ["0", "2"], "z_chunk": ["0", "1", "2.5"]}


@pytest.mark.parametrize("name, text", [(name, text) for name, texts in VALUES.items() for text in texts])
def test_the_command_line_refuses_exactly_what_the_model_refuses(name, text):
    try:
        RunOptions.model_validate({name: text})
        model_accepts = True
    except ValidationError:
        model_accepts = False
    parser = _run_parser()
    parser.error = lambda message: (_ for _ in ()).throw(ValueError(message))  # type: ignore[method-assign]
    try:
        parser.parse_args(["in", "out", f"--{name.replace('_', '-')}", text])
        line_accepts = True
    except ValueError:
        line_accepts = False
    assert line_accepts == model_accepts


LIBRARY_DEFAULTS = [
    (steps.measure_pairs, {"plane": "plane", "flatfield": "flatfield", "background_test": "background_test",
                           "histogram_match": "histogram_match", "max_shift": "max_shift_px", "z": "z",
                           "max_empty_fraction": "max_empty_fraction", "use_gpu": "use_gpu", "threads": "threads"}),
    (measure.MeasureOptions, {"plane": "plane", "flatfield": "flatfield", "background_test": "background_test",
                              "histogram_match": "histogram_match", "max_shift": "max_shift_px", "z": "z",
                              "max_empty_fraction": "max_empty_fraction", "use_gpu": "use_gpu", "threads": "threads"}),
    (steps.fit_affine, {"n_samples": "n_samples", "seed": "seed", "drift_tolerance": "drift_tolerance_px",
                        "backlash": "backlash"}),
    (fit.FitOptions, {"n_samples": "n_samples", "seed": "seed", "drift_tolerance": "drift_tolerance_px",
                      "backlash": "backlash"}),
    (steps.tile_positions, {"placement": "placement"}),
    (assemble.stitch_slice, {"blending": "blending", "flatfield": "flatfield", "ngff_version": "ngff_version",
                             "z_chunk": "z_chunk", "use_gpu": "use_gpu", "threads": "threads"}),
]


@pytest.mark.parametrize("function, names", LIBRARY_DEFAULTS, ids=lambda x: getattr(x, "__name__", ""))
def test_library_defaults_are_the_models(function, names):
    """A library user gets what a command-line user gets when neither says otherwise."""
    parameters = inspect.signature(function).parameters
    for option, parameter in names.items():
        assert parameters[parameter].default == RunOptions.model_fields[option].default, (function.__name__, option)


def test_the_stitch_cache_size_is_checked_like_every_option(capsys):
    parser = _script_parser("linum_motor_stitch.py")
    assert parser.parse_args(["s", "t", "o", "--cache-mb", "64"]).cache_mb == 64
    with pytest.raises(SystemExit):
        parser.parse_args(["s", "t", "o", "--cache-mb", "0"])
    assert "argument --cache-mb: must be more than 0, got 0" in capsys.readouterr().err
