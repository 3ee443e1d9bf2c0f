"""Inferers: mixed precision for MONAI's engines on any device, and a test-time ensemble.

MONAI's ``SupervisedTrainer`` and ``SupervisedEvaluator`` autocast on CUDA only (``amp=True``);
on a CPU, bfloat16 autocast trains the UNet as well as float32 and 1.5-2x faster. The engines
call their inferer around the network, so autocast lives here.

``FlipEnsembleInferer`` averages the class probabilities of a volume and its in-plane flips
and measures their disagreement (predictive entropy). MONAI's ``TestTimeAugmentation`` inverts
random transforms item by item through the data pipeline and returns a mode and a volume
variation coefficient; a fixed set of flips undone on the logits is exact, needs no inversion
and keeps the probabilities, which the entropy needs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.inferers import SimpleInferer

__all__ = ["AMP_DTYPES", "AutocastInferer", "FlipEnsembleInferer"]

AMP_DTYPES = {"bfloat16": torch.bfloat16}  # float16 would need gradient scaling, which an inferer cannot do


class AutocastInferer(SimpleInferer):
    """``network(inputs)`` under ``torch.autocast`` on the inputs' device; the output in float32,
    so losses and metrics are computed in full precision.

    Args:
        amp: ``bfloat16`` or ``None`` (no autocast: a plain ``SimpleInferer``).
    """

    def __init__(self, amp: str | None = None) -> None:
        super().__init__()
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got {amp!r}")
        self.dtype = AMP_DTYPES.get(amp) if amp else None

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.dtype is None:
            return network(inputs, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            out = network(inputs, *args, **kwargs)
        return out.float()


class FlipEnsembleInferer:
    """``inferer`` on a volume (1, C, H, W, D) and on its flips along the in-plane axes; returns
    the log of the mean softmax over the variants (a later softmax gives that mean back), the
    first other output of the network as it is (the content-only image of the unflipped
    volume), and the per-voxel entropy of the mean probabilities (1, 1, H, W, D), in nats.

    Args:
        inferer: the slice inferer (``SliceInferer``) of one variant.
        flips: the variants, as tuples of spatial axes (0: H, 1: W) to flip; ``()`` is the input.
    """

    def __init__(self, inferer: Callable, flips: tuple = ((), (0,), (1,), (0, 1))) -> None:
        if () not in [tuple(f) for f in flips] or any(a not in (0, 1) for f in flips for a in f):
            raise ValueError(f"flips must include () and flip the in-plane axes 0 and 1 only, got {flips}")
        self.inferer, self.flips = inferer, [tuple(f) for f in flips]

    def __call__(self, inputs: torch.Tensor, network: Callable) -> tuple[torch.Tensor, ...]:
        probabilities, rest = 0.0, ()
        for axes in self.flips:
            dims = [2 + a for a in axes]
            out = self.inferer(inputs.flip(dims) if dims else inputs, network)
            logits, others = (out[0], tuple(out[1:])) if isinstance(out, (tuple, list)) else (out, ())
            probabilities = probabilities + torch.softmax((logits.flip(dims) if dims else logits).float(), dim=1)
            if not axes:
                rest = others
        mean = probabilities / len(self.flips)
        entropy = -(mean * mean.clamp_min(1e-12).log()).sum(dim=1, keepdim=True)
        return (mean.clamp_min(1e-12).log(), *rest, entropy)
