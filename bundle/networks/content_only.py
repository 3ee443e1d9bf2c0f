"""The content-only image (paper section 2.2): a slice's content code decoded without its style.

``G_ct(Ec_modality(x), 0)``: the content encoder of the slice's modality, then the CT generator
with the zero style code, the same decoder for both modalities so CT and MR land in one image
space. Zero is the centre of the style prior N(0, I): the generator is trained around it,
whereas an AdaIN with its affine switched off is a path it never sees in training.
``styled`` decodes with another CT style code for a while: the test-time style ensemble
(``bundle/inferers.py``) segments content-only images under several sampled CT styles.

``ContentOnly`` holds just these parts; the DRLModule is a ``ContentOnly`` with the style
encoders and the other generator added, so the content-only image has one implementation and
the inference network takes the DRLModule's weights key for key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from bundle.networks.encoders import content_encoders
from bundle.networks.generator import Generator

__all__ = ["ContentOnly", "DOMAINS"]

DOMAINS = ("ct", "mr")  # domain 1 = CT (labelled source), domain 2 = MR (target)


class ContentOnly(nn.Module):
    """Content-only images of slices of ``modality`` (``forward``) or of either modality (``content_only``).

    Args:
        modality: the modality ``forward`` expects, ``ct`` or ``mr``.
        in_channels: image channels.
        dim: channels of the first content-encoder layer.
        n_down: downsamplings of the content encoders (upsamplings of the generator).
        n_res: residual blocks in the content encoders and in the generator.
        style_dim: length of the style code.
        mlp_dim: width of the generator's style MLP.
        norm: norm of the content encoders, ``instance`` or ``batch``.
        shared_res: final content-encoder residual blocks the two domains share.
        content_domain: whose generator decodes content-only images, ``ct`` or ``mr``.
    """

    def __init__(self, modality: str = "mr", in_channels: int = 1, dim: int = 64, n_down: int = 2, n_res: int = 4, style_dim: int = 8,
                 mlp_dim: int = 256, norm: str = "instance", shared_res: int = 0, content_domain: str = "ct") -> None:
        super().__init__()
        for name, value in (("modality", modality), ("content_domain", content_domain)):
            if value not in DOMAINS:
                raise ValueError(f"{name} must be one of {DOMAINS}, got {value!r}")
        self.content_encoders = content_encoders(DOMAINS, in_channels, dim, n_down, n_res, norm, shared_res)
        channels = self.content_encoders[content_domain].out_channels
        self.generators = nn.ModuleDict({content_domain: Generator(channels, in_channels, n_down, n_res, style_dim, mlp_dim)})
        self.modality, self.content_domain, self.style_dim = modality, content_domain, style_dim
        # the style content-only images are decoded with: zero, except inside ``styled``; not saved with the weights
        self.register_buffer("style", torch.zeros(style_dim), persistent=False)

    def content_only(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """Content-only image of slices ``x`` of ``domain``."""
        code = x
        for name, encoder in self.content_encoders.items():  # a loop TorchScript can compile
            if name == domain:
                code = encoder(x)
        return self.decode_neutral(code)

    def decode_neutral(self, code: torch.Tensor) -> torch.Tensor:
        """Content-only image of content codes: the ``content_domain`` generator with the zero
        style (or the one ``styled`` sets)."""
        style = self.style.to(code.dtype).expand(code.shape[0], self.style_dim)
        out = code
        for name, generator in self.generators.items():
            if name == self.content_domain:
                out = generator(code, style)
        return out

    @contextmanager
    def styled(self, style: torch.Tensor) -> Iterator[None]:
        """Decode content-only images with the style code ``style`` (``style_dim``,) inside the
        ``with`` block instead of zero."""
        if tuple(style.shape) != (self.style_dim,):
            raise ValueError(f"a style code has shape ({self.style_dim},), got {tuple(style.shape)}")
        previous = self.style.clone()
        self.style.copy_(style)
        try:
            yield
        finally:
            self.style.copy_(previous)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.content_only(x, self.modality)
