"""Inferers: mixed precision for MONAI's engines on any device, and a test-time ensemble.

MONAI's ``SupervisedTrainer`` and ``SupervisedEvaluator`` autocast on CUDA only (``amp=True``);
on a CPU, bfloat16 autocast trains the UNet as well as float32 and 1.5-2x faster (where the CPU
has bfloat16 arithmetic: ``bundle.precision``). The engines call their inferer around the
network, so autocast lives here.

``EnsembleInferer`` averages the class probabilities of a volume under several contrasts (and,
for DADR, several sampled CT style codes of the content-only image) and measures their
disagreement (predictive entropy). MONAI's ``TestTimeAugmentation`` inverts
random transforms item by item through the data pipeline and returns a mode and a volume
variation coefficient; a fixed set of intensity variants needs no inversion and keeps the
probabilities, which the entropy needs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.inferers import SimpleInferer
from torch import nn

from bundle.networks.content_only import ContentOnly
from bundle.precision import autocast_dtype

__all__ = ["AutocastInferer", "EnsembleInferer"]


class AutocastInferer(SimpleInferer):
    """``network(inputs)`` under ``torch.autocast`` on the inputs' device; the output in float32,
    so losses and metrics are computed in full precision.

    Args:
        amp: ``bfloat16`` or ``None`` (no autocast: a plain ``SimpleInferer``; also on a CPU
            without bfloat16 arithmetic). float16 would need gradient scaling, which an inferer
            cannot do.
    """

    def __init__(self, amp: str | None = None) -> None:
        super().__init__()
        if amp not in (None, "bfloat16"):
            raise ValueError(f"amp must be 'bfloat16' or None, got {amp!r}")
        self.amp = amp

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        dtype = autocast_dtype(self.amp, inputs.device)
        if dtype is None:
            return network(inputs, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=dtype):
            out = network(inputs, *args, **kwargs)
        return out.float()


class EnsembleInferer:
    """``inferer`` on a normalised volume (1, C, H, W, D) under several variants; returns the log
    of the mean softmax over the variants (a later softmax gives that mean back), the other
    outputs of the network for the volume itself (the content-only image) and the per-voxel
    entropy of the mean probabilities (1, 1, H, W, D), in nats.

    The variants: each intensity gamma (with the zero style), then, for a DADR network, each of
    ``styles`` CT style codes drawn from the style prior N(0, I) (with gamma 1): the content-only
    image decoded with another CT appearance (the paper's diverse style transfer, at test time).
    Gamma keeps the anatomy and changes the contrast, what differs between scanners and
    sequences. Flips, the usual test-time variants, do not suit a liver model: the liver's side
    is part of what the UNet learns (a left-right flip dropped the Dice of a CT-trained UNet on
    three CHAOS T2 patients from 0.85 to 0.50).

    Args:
        inferer: the slice inferer (``SliceInferer``) of one variant.
        gammas: the contrast variants: ``x -> 2 ((x + 1) / 2) ** gamma - 1`` of images in
            [-1, 1]; they must include 1 (the image itself).
        styles: sampled CT style codes (0: none).
        content_path: the network's ``ContentOnly``, whose style the style variants set; needed
            when ``styles`` > 0. A network (or its bound method) with a ``ContentOnly`` of its own
            passed at the call has its own set instead.
        seed: seed of the style codes (the same codes for every volume).
    """

    def __init__(self, inferer: Callable, gammas: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0), styles: int = 0,
                 content_path: nn.Module | None = None, seed: int = 0) -> None:
        if 1.0 not in [float(g) for g in gammas] or any(float(g) <= 0 for g in gammas):
            raise ValueError(f"gammas must be positive and include 1.0 (the image itself), got {gammas}")
        if int(styles) < 0:
            raise ValueError(f"styles must be 0 or more, got {styles}")
        if int(styles) and not isinstance(content_path, ContentOnly):
            raise ValueError("style variants need a DADR network's content path (--adaptation dadr or dual); this network has none")
        self.inferer, self.gammas, self.content_path = inferer, [float(g) for g in gammas], content_path
        self.styles = torch.randn(int(styles), content_path.style_dim, generator=torch.Generator().manual_seed(seed)) if int(styles) else []

    def __call__(self, inputs: torch.Tensor, network: Callable) -> tuple[torch.Tensor, ...]:
        probabilities, rest = 0.0, ()
        for gamma in self.gammas:
            variant = inputs if gamma == 1.0 else 2 * ((inputs + 1) / 2).clamp(0, 1) ** gamma - 1
            logits, others = self._infer(variant, network)
            probabilities = probabilities + torch.softmax(logits.float(), dim=1)
            if gamma == 1.0:
                rest = others
        # the content path of the network run, which need not be the one given (MONAI Label runs a copy of it)
        running = getattr(getattr(network, "__self__", network), "content_path", None)
        content_path = running if isinstance(running, ContentOnly) else self.content_path
        for style in self.styles:
            with content_path.styled(style):
                logits, _ = self._infer(inputs, network)
            probabilities = probabilities + torch.softmax(logits.float(), dim=1)
        mean = probabilities / (len(self.gammas) + len(self.styles))
        entropy = -(mean * mean.clamp_min(1e-12).log()).sum(dim=1, keepdim=True)
        return (mean.clamp_min(1e-12).log(), *rest, entropy)

    def _infer(self, inputs: torch.Tensor, network: Callable) -> tuple[torch.Tensor, tuple]:
        out = self.inferer(inputs, network)
        return (out[0], tuple(out[1:])) if isinstance(out, (tuple, list)) else (out, ())
