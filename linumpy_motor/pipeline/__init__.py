"""The pipeline: steps over files, the embedded runner, command lines and what a run prints.

Modules
-------
options
    :class:`options.RunOptions`, the one owner of every option's name, default, bounds and help.
steps
    Each pipeline step as a function over files: what ``bin/`` scripts and the runner call.
runner
    The whole stage on one machine, with resume (``linumpy-motor run``), using :mod:`.resume` (stamps: what
    is done) and :mod:`.jobs` (running steps in this process or in workers).
cli
    The ``linumpy-motor`` command.
launch
    Its console script: Ctrl-C and SIGTERM handled before the program is imported.
entry
    What every command line shares: version flag, logging, one-line errors for bad input.
logs
    Logging set-up and progress: a bar on a terminal, timestamped lines in a batch log.
jobs
    Running a step's jobs, here or in the run's worker processes (:class:`jobs.Workers`).
worker_server
    The server the workers are forked from, started as early as a command allows.
"""

__all__ = ["cli", "entry", "jobs", "launch", "logs", "options", "resume", "runner", "steps", "worker_server"]
