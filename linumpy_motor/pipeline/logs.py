"""What a run tells its user while it works: logging set-up and progress reporting, in one place.

On a terminal, progress is a tqdm bar and log lines are written above it; elsewhere (SLURM,
nohup, Nextflow: stderr is a file or a pipe) progress is a timestamped log line at most every
``LINE_INTERVAL_S`` seconds or ``LINE_STEP`` of the work, so a batch log shows the run moving.
Every logger of the package is a child of ``linumpy_motor``; :func:`setup` sets its level, and
worker processes repeat the set-up with :func:`init_worker` (lines, never bars).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from linumpy_motor import interrupts

__all__ = ["DATE_FORMAT", "FILE_LEVEL", "FORMAT", "LEVELS", "LINE_INTERVAL_S", "LINE_STEP", "LOG_FILE", "LogConfig",
    "MIN_LINE_GAP_S", "PACKAGE_LOGGER", "QUIET_LOGGERS", "Progress", "add_arguments", "configured", "current",
    "init_worker", "log_file", "plural", "setup", "to_file_only"]

PACKAGE_LOGGER = "linumpy_motor"
LEVELS = ("debug", "info", "warning", "error")
LINE_INTERVAL_S = 10.0
"""Longest time between two progress lines when there is no bar."""
LINE_STEP = 0.1
"""A progress line is also written each time this fraction of the work is done ..."""
MIN_LINE_GAP_S = 1.0
"""... but not sooner than this after the previous line (a quick job logs little more than its end)."""
FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LOG_FILE = "linumpy-motor.log"
"""Name of the run's log file in its output folder (appended to by every run)."""
FILE_LEVEL = logging.INFO
"""The log file records at least this much, whatever the terminal shows."""
QUIET_LOGGERS = ("matplotlib", "PIL")
"""Other libraries whose debug lines ``--debug`` leaves out (drawing the report's figures, not the run)."""

logger = logging.getLogger(PACKAGE_LOGGER)


@dataclass(frozen=True)
class LogConfig:
    """The logging set-up of a process, passed on to worker processes.

    Attributes
    ----------
    level : int
        Level of the package's loggers.
    debug : bool
        Other libraries' debug lines too (and tracebacks, see :mod:`linumpy_motor.pipeline.entry`).
    bars : bool
        Progress as bars (stderr is a terminal and bars were not turned off), else as lines.
    stream : bool
        Records go to stderr (set up by a command line); a library caller's logging is left alone.
    log_file : str or None
        A file every record is appended to as well.
    """

    level: int = logging.INFO
    debug: bool = False
    bars: bool = False
    stream: bool = False
    log_file: str | None = None


_config = LogConfig(bars=sys.stderr.isatty())  # a library caller on a terminal gets bars without any set-up


def current() -> LogConfig:
    """This process's logging set-up."""
    return _config


class _TqdmHandler(logging.StreamHandler):
    """Writes records with ``tqdm.write`` so they appear above a progress bar, not through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup(level: int | str = logging.INFO, *, debug: bool = False, bars: bool | None = None) -> LogConfig:
    """Configure logging for a command-line process (replacing an earlier set-up).

    Parameters
    ----------
    level : int or str
        Level of the package's messages (``"info"`` shows steps and progress).
    debug : bool
        Show debug messages of every library.
    bars : bool or None
        Progress bars instead of lines; ``None``: when stderr is a terminal.

    Returns
    -------
    LogConfig
    """
    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if debug:
        level = logging.DEBUG
    bars = sys.stderr.isatty() if bars is None else bars
    return _apply(replace(_config, level=level, debug=debug, bars=bars and level <= logging.INFO, stream=True))


def _apply(config: LogConfig) -> LogConfig:
    global _config
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_linumpy_motor", False)]:
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = []
    if config.stream:
        handlers.append(_TqdmHandler() if config.bars else logging.StreamHandler(sys.stderr))
        handlers[-1].setLevel(config.level)
    if config.log_file:
        handlers.append(logging.FileHandler(config.log_file, encoding="utf-8"))
        handlers[-1].setLevel(min(config.level, FILE_LEVEL))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        handler._linumpy_motor = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logger.setLevel(min((handler.level for handler in handlers), default=logging.NOTSET))
    if config.stream:
        root.setLevel(logging.DEBUG if config.debug else logging.WARNING)
        for name in QUIET_LOGGERS:  # their debug lines say nothing about a run (matplotlib: one per font tried)
            logging.getLogger(name).setLevel(logging.INFO)
        logging.captureWarnings(True)
        if not config.debug:  # zarr I/O tasks left pending by a failed read are reported by asyncio at exit
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    _config = config
    return config


@contextmanager
def configured(level: int | str = logging.INFO, *, debug: bool = False,
               bars: bool | None = None) -> Iterator[LogConfig]:
    """:func:`setup` while inside, then the logging as it was (a command run in-process, by a test or a
    notebook, leaves its caller's logging alone)."""
    root = logging.getLogger()
    previous, root_level = _config, root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    try:
        yield setup(level, debug=debug, bars=bars)
    finally:  # asyncio stays quiet: zarr tasks a failed read left pending are reported at exit, after this
        _apply(previous)
        root.setLevel(root_level)
        for name, quiet_level in quiet.items():
            logging.getLogger(name).setLevel(quiet_level)
        logging.captureWarnings(previous.stream)


@contextmanager
def log_file(folder: str | Path) -> Iterator[Path]:
    """Append every record to ``folder / LOG_FILE`` (package records from :data:`FILE_LEVEL` on) while inside."""
    path = Path(folder) / LOG_FILE
    previous = _config
    _apply(replace(previous, log_file=str(path)))
    try:
        yield path
    finally:
        _apply(previous)


def to_file_only(level: int, message: str) -> None:
    """Write a record to the log file alone (what the terminal shows another way, e.g. the final error line)."""
    record = logger.makeRecord(logger.name, level, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and getattr(handler, "_linumpy_motor", False):
            handler.handle(record)


def init_worker(config: LogConfig) -> None:
    """Set up logging in a worker process like its parent's, with progress as lines (never bars)."""
    _apply(replace(config, bars=False))


def add_arguments(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """``--log-level``, ``-v`` and ``--debug``; ``sub``: on a sub-command, without defaults, so they may
    also be given after the sub-command without resetting what was given before it."""
    default = (lambda value: argparse.SUPPRESS) if sub else (lambda value: value)
    parser.add_argument("--log-level", choices=LEVELS, default=default("info"),
                        help="messages shown: steps and progress from 'info' (default: info)")
    parser.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug",
                        default=argparse.SUPPRESS, help="same as --log-level debug")
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="debug messages of every library, and tracebacks on errors")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A ``progress(done, total)`` callback that shows a bar on a terminal and log lines elsewhere.

    Parameters
    ----------
    label : str
        What is being done (``"stitch slice_z03"``).
    unit : str
        What ``done`` counts (``"block"``, ``"tile row"``).
    bars : bool or None
        Bar or lines; ``None``: as set up in this process (:func:`setup`, :func:`init_worker`).

    Notes
    -----
    Picklable before its first call, so it can be handed to a worker process.
    Lines are written every :data:`LINE_INTERVAL_S` seconds or :data:`LINE_STEP` of the work
    (at most one per :data:`MIN_LINE_GAP_S`), and once at the end, with the rate and the time left.
    """

    def __init__(self, label: str, unit: str, *, bars: bool | None = None) -> None:
        self.label, self.unit, self.bars = label, unit, bars
        self._bar: tqdm | None = None
        self._start: float | None = None
        self._last_time = 0.0
        self._last_fraction = 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None, "_start": None}

    def __call__(self, done: int, total: int) -> None:
        """Record that ``done`` of ``total`` units are finished (a safe point to stop at:
        :func:`linumpy_motor.interrupts.check`)."""
        interrupts.check()
        now = time.monotonic()
        if self._start is None:
            self._start = self._last_time = now
        bars = _config.bars if self.bars is None else self.bars
        if bars:
            self._update_bar(done, total)
        else:
            fraction = done / total if total else 1.0
            waited = now - self._last_time
            if (done >= total or waited >= LINE_INTERVAL_S
                    or (fraction >= self._last_fraction + LINE_STEP and waited >= MIN_LINE_GAP_S)):
                logger.info(self.line(done, total, now - self._start))
                self._last_time, self._last_fraction = now, fraction

    def _update_bar(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.label, unit=self.unit, leave=False, file=sys.stderr)
        self._bar.total = total
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()
            self._bar = None

    def line(self, done: int, total: int, elapsed: float) -> str:
        """``label: done/total units (percent), rate, time left`` (or the time taken at the end)."""
        percent = 100 * done / total if total else 100.0
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}: {done}/{total} {self.unit}s ({percent:.0f} %), {rate:.3g} {self.unit}s/s"
        if done >= total:
            return f"{text}, took {_duration(elapsed)}"
        left = (total - done) / rate if rate > 0 else None
        return f"{text}, ETA {_duration(left) if left is not None else '?'}"


def plural(count: int, noun: str) -> str:
    """``1 slice``, ``3 slices``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")
