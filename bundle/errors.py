"""One exception type for bad input, so every command reports it the same way."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data: the message names the offending file first, then the problem.

    Args:
        path: the file or folder at fault.
        problem: what was expected and what was found.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
