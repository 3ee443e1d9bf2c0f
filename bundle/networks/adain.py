"""Adaptive instance normalisation (AdaIN): how a style code restyles content features.

MONAI has no AdaIN; it is written here. Features are instance-normalised without affine, then
scaled and shifted by parameters predicted from the style code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bundle.networks.layers import reflect_conv

__all__ = ["AdaptiveInstanceNorm", "AdaINResBlock"]


class AdaptiveInstanceNorm(nn.Module):
    """``gamma * instance_norm(x) + beta`` with per-sample ``gamma, beta`` of shape (B, C).

    Args:
        channels: number of feature channels C.
        eps: numerical stabiliser of the instance norm.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        # group norm with one group per channel is instance norm, in one fused kernel
        return torch.addcmul(beta[:, :, None, None], F.group_norm(x, self.channels, eps=self.eps), gamma[:, :, None, None])


class AdaINResBlock(nn.Module):
    """Residual block whose two norms are AdaIN: ``x + conv-AdaIN-relu-conv-AdaIN``.

    It consumes ``4 * channels`` style parameters per sample: (gamma1, beta1, gamma2, beta2).

    Args:
        channels: feature channels (in = out).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = reflect_conv(channels, channels, 3, act=None)
        self.conv2 = reflect_conv(channels, channels, 3, act=None)
        self.norm1 = AdaptiveInstanceNorm(channels)
        self.norm2 = AdaptiveInstanceNorm(channels)

    @property
    def num_params(self) -> int:
        return 4 * self.channels

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        g1, b1, g2, b2 = params.split(self.channels, dim=1)  # the MLP predicts scale deviations from 1
        h = F.relu(self.norm1(self.conv1(x), g1 + 1, b1))
        return x + self.norm2(self.conv2(h), g2 + 1, b2)
