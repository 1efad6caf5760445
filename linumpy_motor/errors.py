"""The one exception type for bad input, so entry points can report it in one line."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input: a file, store or parameter the stage cannot use.

    Parameters
    ----------
    path : str or Path or None
        The file or store at fault (``None`` for a bad parameter).
    problem : str
        What is wrong, in a few words.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")

    def __reduce__(self):
        """Pickle with both arguments, so an error raised in a worker process reaches the parent intact."""
        return type(self), (self.path, self.problem)
