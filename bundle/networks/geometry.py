"""Slice geometry shared by training and inference: any slice <-> the networks' square input.

Training slices and inference slices go through these same two functions, so a model sees at
inference exactly the scale and padding it was trained on, whatever the scan's matrix size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["to_square", "from_square"]


def _fitted_size(height: int, width: int, size: int) -> tuple[int, int]:
    scale = size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _resize(x: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    if (x.shape[-2], x.shape[-1]) == (height, width):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(height, width), mode="nearest")
    # antialiased resizing has no bfloat16 kernel: under autocast, resize in float32
    return F.interpolate(x.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def to_square(x: torch.Tensor, size: int, mode: str = "bilinear", pad_value: float = -1.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size): longest side resized to ``size`` keeping the aspect ratio,
    then padded evenly on both sides with ``pad_value`` (-1 is the normalised background)."""
    height, width = _fitted_size(x.shape[-2], x.shape[-1], size)
    x = _resize(x, height, width, mode)
    top, left = (size - height) // 2, (size - width) // 2
    return F.pad(x, [left, size - width - left, top, size - height - top], value=pad_value)


def from_square(y: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Inverse of :func:`to_square`: crop the padding of a square map, resize it to (height, width)."""
    size = y.shape[-1]
    fitted_h, fitted_w = _fitted_size(height, width, size)
    top, left = (size - fitted_h) // 2, (size - fitted_w) // 2
    return _resize(y[..., top:top + fitted_h, left:left + fitted_w], height, width, mode)
