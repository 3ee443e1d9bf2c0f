"""Convolution layers with reflection padding, built from MONAI's ``Convolution`` block.

MONAI's ``Convolution`` pads with zeros only; the DRL networks pad by reflection (no dark
frame for the generator to learn around), so a ``ReflectionPad2d`` goes in front of an
unpadded MONAI ``Convolution`` that keeps MONAI's norm/activation factories.
"""

from __future__ import annotations

from torch import nn
from monai.networks.blocks import Convolution

__all__ = ["NORMS", "reflect_conv", "ResBlock"]

# Config names -> MONAI Norm factory arguments. "layer" normalises each sample over (C, H, W)
# with a per-channel affine: GroupNorm with one group is exactly that, and fused.
NORMS = {"instance": ("instance", {"affine": True}), "batch": "batch", "layer": ("group", {"num_groups": 1}), "none": None}


def reflect_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, norm: str = "none", act: str | tuple | None = "relu") -> nn.Sequential:
    """Reflection pad -> conv -> norm -> activation, keeping ``size / stride`` spatially."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    conv = Convolution(2, in_channels, out_channels, strides=stride, kernel_size=kernel_size, adn_ordering="NA",
                       act=act, norm=NORMS[norm], padding=0, bias=True)  # fmt: skip
    pad = (kernel_size - 1) // 2, kernel_size // 2, (kernel_size - 1) // 2, kernel_size // 2
    return nn.Sequential(nn.ReflectionPad2d(pad if stride == 1 else (kernel_size - 1) // 2), conv)


class ResBlock(nn.Module):
    """``x + conv(norm, relu) -> conv(norm)``: the residual block of the content encoder.

    Args:
        channels: feature channels (in = out).
        norm: ``instance``, ``batch``, ``layer`` or ``none``.
    """

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.body = nn.Sequential(reflect_conv(channels, channels, 3, norm=norm), reflect_conv(channels, channels, 3, norm=norm, act=None))

    def forward(self, x):
        return x + self.body(x)
