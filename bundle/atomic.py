"""All-or-nothing file output: a killed or failed run never leaves a file that looks finished."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bundle.errors import DataError

__all__ = ["atomic_outputs", "check_writable_dir"]


def check_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and make sure files can be written there, before any work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(path, f"output folder cannot be created ({e.strerror})") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataError(path, "output folder is not writable")
    return path


@contextmanager
def atomic_outputs(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield temporary paths next to ``paths``; rename them into place only if the block succeeds.

    The temporary names keep the final suffix (``.nii.gz``...) because writers pick the format
    from it. On any exception every temporary file is removed and nothing is renamed.
    """
    finals = [Path(p) for p in paths]
    tag = uuid.uuid4().hex[:8]
    temps = [p.with_name(f".tmp-{tag}-{p.name}") for p in finals]
    try:
        yield temps
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
