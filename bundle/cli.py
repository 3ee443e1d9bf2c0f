"""Command-line entry: ``fire`` for arguments, one clear line and exit code 2 for bad input."""

from __future__ import annotations

import logging
import sys
from typing import Any

import fire

from bundle.errors import DataError

__all__ = ["run_cli", "flag"]


def run_cli(component: Any) -> None:
    """Run ``component`` with fire; a ``DataError`` prints ``error: <file>: <problem>`` and exits 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(component)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def flag(value: bool | str, name: str) -> bool:
    """A boolean option from the command line: fire passes ``True``/``False`` as booleans but
    ``true``/``false`` as strings, and the string ``"false"`` would count as true."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"--{name} must be True or False, got {value!r}")
