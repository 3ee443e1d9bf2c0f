"""Anatomical directions of a volume's array axes, from its voxel-to-world (RAS) affine."""

from __future__ import annotations

import nibabel as nib
import numpy as np

__all__ = ["anatomical_axis"]

_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def anatomical_axis(affine: np.ndarray, code: str) -> tuple[int, int]:
    """(array axis, +1 / -1) along which the anatomical direction ``code`` (``"S"``, ``"A"``, ``"R"``...)
    grows: the axis nearest to it, +1 when increasing indices go that way."""
    codes = nib.aff2axcodes(np.asarray(affine, dtype=np.float64))
    for axis, c in enumerate(codes):
        if c in (code, _OPPOSITE[code]):
            return axis, 1 if c == code else -1
    raise ValueError(f"no {code} axis in the affine's directions {codes}")
