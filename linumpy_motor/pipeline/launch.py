"""The ``linumpy-motor`` console script: Ctrl-C and SIGTERM are handled from its first moment.

Importing the program (NumPy, SciPy, zarr, pydantic, ...) takes a second or more; the handlers of
:mod:`linumpy_motor.interrupts` are installed before it, so a Ctrl-C or SIGTERM then ends the command
with its exit code and one line, as at any later moment, never with a traceback or silently.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from linumpy_motor import interrupts, memory
from linumpy_motor.errors import exit_code
from linumpy_motor.pipeline import worker_server

__all__ = ["PROG", "main"]

PROG = "linumpy-motor"


def main(argv: Sequence[str] | None = None) -> int:
    """Install the signal handlers, then import and run :func:`linumpy_motor.pipeline.cli.main` (with ``argv``
    given, a call in-process, the caller's signal handling is put back afterwards)."""
    installed = interrupts.install()
    memory.limit_arenas()
    if worker_server.workers_asked(sys.argv[1:] if argv is None else argv) > 1:
        worker_server.start()  # its imports run beside this process's own
    try:
        try:
            from linumpy_motor.pipeline import cli
        except (MemoryError, ImportError) as exc:  # an address-space limit too low to load the libraries
            interrupts.check()  # or a Ctrl-C or SIGTERM inside an extension's import, which reports it as its own error
            if memory.address_space_limit() is None and not isinstance(exc, MemoryError):
                raise
            error = memory.out_of_memory("start-up", None, exc)
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return exit_code(error)
        return cli.main(argv)  # from the moment it has built its parser, it handles Ctrl-C and SIGTERM itself
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM during the imports, or before the command's parser is built
        interrupts.finish()
        stop = interrupts.outcome(exc)
        assert stop is not None  # a KeyboardInterrupt always has one
        print(f"{PROG}: {stop[1]}", file=sys.stderr)
        interrupted = stop[0]
    finally:
        worker_server.stop()  # whoever reads the command's output is not kept waiting for it
        if argv is not None and installed:
            interrupts.restore()
    if argv is None:  # the process's own command: it ends now, as any interrupted command does
        interrupts.end_process(interrupted)
    return interrupted
