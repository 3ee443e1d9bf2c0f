"""DRLModule: both domains' encoders and generators, with the operations the paper names."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from bundle.data.intensity import CT_WINDOW, MR_PERCENTILES
from bundle.networks.content_only import DOMAINS, ContentOnly
from bundle.networks.encoders import StyleEncoder
from bundle.networks.generator import Generator
from bundle.networks.trained_for import TrainedFor

__all__ = ["DRLModule", "DOMAINS"]


class DRLModule(ContentOnly):
    """Ec1, Ec2 (content), Es1, Es2 (style) and G1, G2 (generators) of the paper's DRLModule.

    ``forward`` runs everything one training iteration needs from the generator side, once:
    encode both images, reconstruct them in-domain (eq. 2), translate across domains with the
    given random styles (eq. 3), and re-encode the translations (eq. 4). The discriminators
    live outside, with their own optimiser.

    It is a ``ContentOnly`` (content encoders and the generator of content-only images) with the
    style encoders and the other domain's generator added: ``content_only(x, domain)`` is that
    class's, and the inference network loads these weights key for key.

    Args:
        in_channels: image channels.
        dim: channels of the first encoder layer.
        n_down: downsamplings of the content encoder (upsamplings of the generator).
        n_res: residual blocks in the content encoder and in the generator.
        style_dim: length of the style code (paper: 8).
        mlp_dim: width of the style MLP.
        style_n_down: downsamplings of the style encoder.
        norm: norm of the content encoder, ``instance`` or ``batch``.
        content_domain: whose generator decodes content-only images, ``ct`` or ``mr``.
        shared_res: how many of the content encoders' final residual blocks the two domains share
            (0 in the paper; sharing, as in DRIT, ties both modalities to one content space).
        image_size, ct_window, mr_percentiles: the input the weights are trained for, recorded
            with them (``TrainedFor``) so that stage 2 and inference refuse another.
        task_segmenter: ``None`` (the paper) or a segmentation network of content-only images
            (the task-aware content space, the paper's section 4 future work): ``forward`` then
            segments the content-only images of the CT slices and of their MR translations,
            so that a loss on the CT labels (``DRLLoss``'s ``task_weight``) keeps the liver in
            the content space of both encoders; with ``segment_mr``, also the content-only
            images of the real MR slices (for a loss on their pseudo-labels, from teachers trained
            without MR labels). Stage 2 reads only the content path's weights.
    """

    def __init__(
        self,
        in_channels: int = 1,
        dim: int = 64,
        n_down: int = 2,
        n_res: int = 4,
        style_dim: int = 8,
        mlp_dim: int = 256,
        style_n_down: int = 4,
        norm: str = "instance",
        content_domain: str = "ct",
        shared_res: int = 0,
        image_size: int = 128,
        ct_window: Sequence[float] = CT_WINDOW,
        mr_percentiles: Sequence[float] = MR_PERCENTILES,
        task_segmenter: Optional[nn.Module] = None,
    ) -> None:
        super().__init__("mr", in_channels, dim, n_down, n_res, style_dim, mlp_dim, norm, shared_res, content_domain)
        self.style_encoders = nn.ModuleDict({d: StyleEncoder(in_channels, dim, style_n_down, style_dim) for d in DOMAINS})
        channels = self.content_encoders["ct"].out_channels
        for d in DOMAINS:
            if d != content_domain:
                self.generators[d] = Generator(channels, in_channels, n_down, n_res, style_dim, mlp_dim)
        self.trained_for = TrainedFor(image_size, ct_window, mr_percentiles)
        self.task_segmenter = task_segmenter

    def encode(self, x: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(content code, style code) of images ``x`` of ``domain``."""
        return self.content_encoders[domain](x), self.style_encoders[domain](x)

    def decode(self, content: torch.Tensor, style: torch.Tensor, domain: str) -> torch.Tensor:
        """Image of ``domain`` from a content code and a style code."""
        return self.generators[domain](content, style)

    def reconstruct(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """In-domain reconstruction G_i(Ec_i(x), Es_i(x)) (eq. 2)."""
        return self.decode(*self.encode(x, domain), domain)

    def random_style(self, n: int, like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Style codes drawn from the prior N(0, I)."""
        return torch.randn(n, self.style_dim, device=like.device, dtype=like.dtype, generator=generator)

    def translate(self, x: torch.Tensor, source: str, target: str, style: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cross-domain translation: content of ``x`` with a ``target`` style (random if ``None``);
        pass ``Es_target(reference)`` for the style of a reference image (paper Fig. 7)."""
        style = self.random_style(x.shape[0], x) if style is None else style
        return self.decode(self.content_encoders[source](x), style, target)

    def forward(self, x_ct: torch.Tensor, x_mr: torch.Tensor, style_ct: torch.Tensor, style_mr: torch.Tensor,
                segment_mr: bool = False) -> dict[str, torch.Tensor]:
        """All generator-side tensors of one DRL iteration (eq. 2-4), each computed once.

        ``style_ct`` / ``style_mr`` are random style codes of each domain for the translations.
        With a ``task_segmenter``, ``task_logits`` are its logits on the content-only images of
        ``x_ct`` and of its MR translations ``ct2mr`` (in that order): both have the CT labels;
        with ``segment_mr`` too, ``task_logits_mr`` are its logits on the content-only ``x_mr``.
        """
        c_ct, s_ct = self.encode(x_ct, "ct")
        c_mr, s_mr = self.encode(x_mr, "mr")
        # Each generator decodes its reconstruction and its translation in one batch: half the
        # calls, and exact, since AdaIN and layer norm treat every sample on its own.
        recon_ct, mr2ct = self.decode(torch.cat([c_ct, c_mr]), torch.cat([s_ct, style_ct]), "ct").split([len(c_ct), len(c_mr)])
        recon_mr, ct2mr = self.decode(torch.cat([c_mr, c_ct]), torch.cat([s_mr, style_mr]), "mr").split([len(c_mr), len(c_ct)])
        c_ct2mr, s_ct2mr = self.encode(ct2mr, "mr")
        c_mr2ct, s_mr2ct = self.encode(mr2ct, "ct")
        out = {
            "content_ct": c_ct, "content_mr": c_mr, "style_ct": s_ct, "style_mr": s_mr,
            "recon_ct": recon_ct, "recon_mr": recon_mr, "ct2mr": ct2mr, "mr2ct": mr2ct,
            "content_ct2mr": c_ct2mr, "style_ct2mr": s_ct2mr, "content_mr2ct": c_mr2ct, "style_mr2ct": s_mr2ct,
        }
        if segment_mr and self.task_segmenter is None:
            raise ValueError("segment_mr needs a task segmenter (the task-aware content space: task_weight > 0)")
        if self.task_segmenter is not None:
            contents = [c_ct, c_ct2mr] + ([c_mr] if segment_mr else [])
            logits = self.task_segmenter(self.decode_neutral(torch.cat(contents))).split([len(c) for c in contents])
            out["task_logits"] = torch.cat(logits[:2])
            if segment_mr:
                out["task_logits_mr"] = logits[2]
        return out
