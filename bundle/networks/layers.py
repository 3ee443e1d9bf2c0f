"""Convolution layers with reflection padding, built from MONAI's ``Convolution`` block.

MONAI's ``Convolution`` pads with zeros only; the DRL networks pad by reflection (no dark
frame for the generator to learn around), so a ``ReflectionPad2d`` goes in front of an
unpadded MONAI ``Convolution`` that keeps MONAI's norm/activation factories.
"""

from __future__ import annotations

from torch import nn
from monai.networks.blocks import Convolution

__all__ = ["NORMS", "norm_args", "reflect_conv", "ResBlock"]

NORMS = ("instance", "batch", "layer", "none")


def norm_args(norm: str, channels: int) -> tuple | str | None:
    """MONAI Norm factory arguments for a config norm name.

    Instance norm (with affine) and layer norm (each sample over C, H, W, per-channel affine)
    are both group norms, with ``channels`` groups and with one group: same maths, but one fused
    kernel that keeps channels-last tensors as they are (``InstanceNorm2d`` copies them).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    groups = {"instance": channels, "layer": 1}
    if norm in groups:
        return ("group", {"num_groups": groups[norm]})
    return None if norm == "none" else norm


def reflect_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, norm: str = "none", act: str | tuple | None = "relu") -> nn.Sequential:
    """Reflection pad -> conv -> norm -> activation, keeping ``size / stride`` spatially."""
    conv = Convolution(2, in_channels, out_channels, strides=stride, kernel_size=kernel_size, adn_ordering="NA",
                       act=act, norm=norm_args(norm, out_channels), padding=0, bias=True)
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
