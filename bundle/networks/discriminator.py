"""Multi-scale discriminator D: the same patch critic at 3 scales of the image.

MONAI's ``MultiScalePatchDiscriminator`` runs its critics on the full-size image at every
scale; here the input is average-pooled between scales, as in MUNIT/pix2pixHD, so the coarse
critic judges global layout and the fine one texture.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bundle.networks.layers import reflect_conv

__all__ = ["MultiScaleDiscriminator", "ContentDiscriminator", "DomainDiscriminators"]


class MultiScaleDiscriminator(nn.Module):
    """``num_scales`` critics, each ``n_layers`` x [4x4 stride-2 conv, LeakyReLU 0.2] (no norm)
    -> 1x1 conv to one channel; outputs are raw scores (least-squares or logits).

    Args:
        in_channels: image channels.
        dim: channels of the first layer (doubling per layer).
        n_layers: stride-2 layers per critic.
        num_scales: number of scales.
    """

    def __init__(self, in_channels: int = 1, dim: int = 64, n_layers: int = 4, num_scales: int = 3) -> None:
        super().__init__()
        self.critics = nn.ModuleList(self._critic(in_channels, dim, n_layers) for _ in range(num_scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @staticmethod
    def _critic(in_channels: int, dim: int, n_layers: int) -> nn.Sequential:
        layers, channels = [], in_channels
        for i in range(n_layers):
            out = dim * 2**i
            layers.append(reflect_conv(channels, out, 4, stride=2, act=("leakyrelu", {"negative_slope": 0.2})))
            channels = out
        layers.append(nn.Conv2d(channels, 1, 1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, critic in enumerate(self.critics):
            if i:
                x = self.downsample(x)
            outputs.append(critic(x))
        return outputs


class ContentDiscriminator(nn.Module):
    """Tells which modality a content code came from (DRIT's content discriminator, not in the
    paper): 3 x [3x3 stride-2 conv, LeakyReLU 0.2] -> global average pool -> linear -> score.

    Args:
        channels: channels of the content code.
        dim: channels of the hidden layers.
    """

    def __init__(self, channels: int = 256, dim: int = 64) -> None:
        super().__init__()
        act = ("leakyrelu", {"negative_slope": 0.2})
        self.features = nn.Sequential(reflect_conv(channels, dim, 3, stride=2, act=act), reflect_conv(dim, dim, 3, stride=2, act=act),
                                      reflect_conv(dim, dim, 3, stride=2, act=act))
        self.head = nn.Linear(dim, 1)

    def forward(self, content: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(content).mean(dim=(2, 3)))


class DomainDiscriminators(nn.Module):
    """D1 (CT), D2 (MR) and the optional content discriminator as one module, so a
    discriminator update is a single forward call (what DistributedDataParallel needs between
    two backward passes).

    Args:
        in_channels, dim, n_layers, num_scales: as ``MultiScaleDiscriminator``.
        content_channels: channels of the content code; > 0 adds a ``ContentDiscriminator``.
    """

    def __init__(self, in_channels: int = 1, dim: int = 64, n_layers: int = 4, num_scales: int = 3, content_channels: int = 0) -> None:
        super().__init__()
        self.ct = MultiScaleDiscriminator(in_channels, dim, n_layers, num_scales)
        self.mr = MultiScaleDiscriminator(in_channels, dim, n_layers, num_scales)
        self.content = ContentDiscriminator(content_channels, dim) if content_channels > 0 else None

    def forward(self, x_ct: torch.Tensor, x_mr: torch.Tensor, content_ct: Optional[torch.Tensor] = None,
                content_mr: Optional[torch.Tensor] = None) -> tuple[list[torch.Tensor], list[torch.Tensor], Optional[torch.Tensor]]:
        """Image scores of both domains and, with a content discriminator, content scores of
        ``cat([content_ct, content_mr])``."""
        content = None
        if self.content is not None and content_ct is not None and content_mr is not None:
            content = self.content(torch.cat([content_ct, content_mr]))
        return self.ct(x_ct), self.mr(x_mr), content
