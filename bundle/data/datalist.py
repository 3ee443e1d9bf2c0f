"""Datalists: the JSON files that list a run's volumes by section (``source``, ``target``...).

Paths in a datalist are relative to the file. Without data, the training configs fall back to
the built-in phantoms, made in the datalist's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bundle.data.phantoms import make_phantoms
from bundle.errors import DataError

__all__ = ["PSEUDO_SECTION", "read_datalist", "target_with_pseudo_labels", "ensure_datalist"]

PSEUDO_SECTION = "target_pseudo"  # pseudo-labelled MR (bundle/self_training.py): stage 2's joint_section, stage 1's target_pseudo_labels


def read_datalist(path: str | Path, section: str) -> list[dict]:
    """Entries of one datalist section with paths made absolute (they are relative to the file)."""
    path = Path(path)
    try:
        datalist = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, f"is not a readable datalist JSON: {e}") from e
    if section not in datalist or not datalist[section]:
        raise DataError(path, f"has no entries in section {section!r} (sections: {sorted(datalist)})")
    base = path.resolve().parent
    return [{**e, **{k: str(base / e[k]) for k in ("image", "label", "organs", "labels") if k in e}} for e in datalist[section]]


def target_with_pseudo_labels(path: str | Path) -> list[dict]:
    """Every unlabelled MR of ``path`` (``target``, then any ``PSEUDO_SECTION`` MR not in it), each
    with its pseudo-label where ``PSEUDO_SECTION`` has one: stage 1 adapts to the MR whose
    pseudo-labels failed the filters too, and segments only the others."""
    pseudo = {e["image"]: e for e in read_datalist(path, PSEUDO_SECTION)}
    target = read_datalist(path, "target")
    images = {e["image"] for e in target}
    return [pseudo.get(e["image"], e) for e in target] + [e for image, e in pseudo.items() if image not in images]


def ensure_datalist(path: str | Path, n_ct: int = 8, n_mr: int = 8, size: int = 128, seed: int = 0) -> str:
    """``path`` if it exists; if its folder does not exist or is empty, make the built-in phantoms there.

    This is how the training configs fall back to the phantoms when no data is given. Under
    torch.distributed, rank 0 makes them while the other ranks wait.
    """
    path = Path(path)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not path.is_file() and (not distributed or torch.distributed.get_rank() == 0):
        if path.parent.exists() and any(path.parent.iterdir()):
            raise DataError(path, "does not exist (and its folder is not empty, so no phantoms were made there)")
        make_phantoms(path.parent, n_ct=n_ct, n_mr=n_mr, seed=seed, size=size)
    if distributed:
        torch.distributed.barrier()
    if not path.is_file():
        raise DataError(path, f"is not one of the phantom datalists written to {path.parent}")
    return str(path)
