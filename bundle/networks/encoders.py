"""Content encoder Ec (image -> spatial content code) and style encoder Es (image -> style vector)."""

from __future__ import annotations

import torch
from torch import nn

from bundle.networks.layers import ResBlock, reflect_conv

__all__ = ["ContentEncoder", "StyleEncoder", "content_encoders"]


class ContentEncoder(nn.Module):
    """Ec: 7x7 conv -> ``n_down`` stride-2 4x4 convs (channels x2) -> ``n_res`` residual blocks.

    The content code keeps the anatomy: a 256 px image gives a 64x64 map of ``dim * 2**n_down``
    channels (paper: 64x64x256 with dim 64, n_down 2).

    Args:
        in_channels: image channels.
        dim: channels of the first layer.
        n_down: number of stride-2 downsamplings.
        n_res: number of residual blocks.
        norm: ``instance`` (MUNIT) or ``batch`` (the paper's wording).
        shared: final layers shared with the other domain's content encoder (the same module
            object in both), appended after this encoder's own layers.

    Example::

        code = ContentEncoder(dim=16)(torch.zeros(2, 1, 64, 64))  # (2, 64, 16, 16)
    """

    def __init__(self, in_channels: int = 1, dim: int = 64, n_down: int = 2, n_res: int = 4, norm: str = "instance", shared: nn.Module | None = None) -> None:
        super().__init__()
        layers = [reflect_conv(in_channels, dim, 7, norm=norm)]
        for _ in range(n_down):
            layers.append(reflect_conv(dim, dim * 2, 4, stride=2, norm=norm))
            dim *= 2
        layers += [ResBlock(dim, norm) for _ in range(n_res)]
        if shared is not None:
            layers.append(shared)
        self.model = nn.Sequential(*layers)
        self.out_channels = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class StyleEncoder(nn.Module):
    """Es: 7x7 conv -> ``n_down`` stride-2 4x4 convs -> global average pool -> linear -> style code.

    No normalisation: instance norm would erase the very statistics that carry style.
    Channels double for the first two downsamplings, then stay (as in MUNIT).

    Args:
        in_channels: image channels.
        dim: channels of the first layer.
        n_down: number of stride-2 downsamplings.
        style_dim: length of the style code (paper: 8).
    """

    def __init__(self, in_channels: int = 1, dim: int = 64, n_down: int = 4, style_dim: int = 8) -> None:
        super().__init__()
        layers = [reflect_conv(in_channels, dim, 7)]
        for i in range(n_down):
            out = dim * 2 if i < 2 else dim
            layers.append(reflect_conv(dim, out, 4, stride=2))
            dim = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(dim, style_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def content_encoders(domains: tuple[str, ...], in_channels: int = 1, dim: int = 64, n_down: int = 2, n_res: int = 4,
                     norm: str = "instance", shared_res: int = 0) -> nn.ModuleDict:
    """One content encoder per domain, the last ``shared_res`` residual blocks shared between them.

    The DRLModule and the inference network build their encoders here, so their weights match key
    for key.
    """
    if not 0 <= shared_res <= n_res:
        raise ValueError(f"shared_res must be between 0 and n_res={n_res}, got {shared_res}")
    code_channels = dim * 2**n_down
    shared = nn.Sequential(*[ResBlock(code_channels, norm) for _ in range(shared_res)]) if shared_res else None
    return nn.ModuleDict({d: ContentEncoder(in_channels, dim, n_down, n_res - shared_res, norm, shared) for d in domains})
