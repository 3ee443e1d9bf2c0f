"""One exception type for bad input, so every command reports it the same way."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError", "unwrap_data_error"]


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


def unwrap_data_error(error: BaseException) -> BaseException:
    """The ``DataError`` behind ``error`` if there is one (MONAI wraps a transform's exception in
    ``RuntimeError("applying transform ...")``, which names the transform, not the file), else ``error``."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, DataError):
            return cause
        cause = cause.__cause__
    return error
