"""Generator G: content code + style code -> image, through AdaIN residual blocks."""

from __future__ import annotations

import torch
from monai.networks.nets import FullyConnectedNet
from torch import nn

from bundle.networks.adain import AdaINResBlock
from bundle.networks.layers import reflect_conv

__all__ = ["Generator"]


class Generator(nn.Module):
    """G: ``n_res`` AdaIN residual blocks -> ``n_up`` x [2x nearest upsample, 5x5 conv, layer norm,
    ReLU] -> 7x7 conv -> tanh. A style MLP (style_dim -> mlp_dim -> mlp_dim -> all AdaIN
    parameters) turns the style code into the AdaIN scales and shifts.

    Args:
        content_channels: channels of the content code (``ContentEncoder.out_channels``).
        out_channels: image channels.
        n_up: number of 2x upsamplings (equal to the encoder's ``n_down``).
        n_res: number of AdaIN residual blocks.
        style_dim: length of the style code.
        mlp_dim: width of the style MLP.
    """

    def __init__(self, content_channels: int = 256, out_channels: int = 1, n_up: int = 2, n_res: int = 4, style_dim: int = 8, mlp_dim: int = 256) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(AdaINResBlock(content_channels) for _ in range(n_res))
        self.num_style_params = sum(block.num_params for block in self.res_blocks)
        self.mlp = FullyConnectedNet(style_dim, self.num_style_params, [mlp_dim, mlp_dim], act="RELU")
        layers: list[nn.Module] = []
        dim = content_channels
        for _ in range(n_up):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), reflect_conv(dim, dim // 2, 5, norm="layer")]
            dim //= 2
        layers.append(reflect_conv(dim, out_channels, 7, act="tanh"))
        self.upsample = nn.Sequential(*layers)
        self.style_dim = style_dim

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        params = self.mlp(style)
        x = content
        offset = 0
        for block in self.res_blocks:
            n = 4 * block.channels
            x = block(x, params[:, offset : offset + n])
            offset += n
        return self.upsample(x)
