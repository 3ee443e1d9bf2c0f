"""Diverse style transfer (paper section 3, "B. Diverse Style Transfer"): DADR's translation of a
labelled CT slice to MR, its content code decoded with MR style codes sampled from the prior.

Stage 2's second use of the disentangled representation (``train.yaml --adaptation dadr_style``):
instead of stripping both modalities of their style (content-only images), the labelled CT
slices are translated to MR, each with its own random MR style, and the UNet segments the MR
images as they are. It is the DACGAN recipe with DADR's many-to-many translation in place of the
CycleGAN's one-to-one mapping; at test time nothing passes through stage 1, so anatomy the
content code loses costs only the training images, not the MR being segmented.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bundle.errors import DataError
from bundle.networks.drl import DRLModule
from bundle.networks.segmenter import read_weights

__all__ = ["DiverseStyleTransfer", "load_style_transfer"]


class DiverseStyleTransfer(nn.Module):
    """``G_target(Ec_source(x), s)`` with ``s ~ N(0, I)`` drawn for every slice: a frozen stage 1
    used as the translator of ``bundle.data.adapted.AdaptedSlices``.

    Args:
        drl: a trained ``DRLModule``.
        source, target: the translation direction (``ct`` -> ``mr`` for stage 2).
    """

    def __init__(self, drl: DRLModule, source: str = "ct", target: str = "mr") -> None:
        super().__init__()
        self.drl, self.source, self.target = drl.requires_grad_(False).eval(), source, target

    def train(self, mode: bool = True) -> DiverseStyleTransfer:
        return super().train(False)  # frozen: instance norms keep their inference behaviour

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drl.translate(x, self.source, self.target)


def load_style_transfer(path: str | Path, source: str = "ct", target: str = "mr", **sizes) -> DiverseStyleTransfer:
    """The diverse ``source``-to-``target`` translator of a stage-1 ``state_dict`` (``drl_path``),
    refused by name when missing, trained for another input (``TrainedFor``) or of other sizes.

    Args:
        path: the DRLModule weights stage 1 writes.
        source, target: the translation direction.
        sizes: ``DRLModule`` arguments (``dim``, ``n_res``, ``shared_res``, ``image_size``, ``ct_window``...).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "does not exist: train stage 1 first (configs/drl_train.yaml) or pass --drl_path")
    drl = DRLModule(**sizes)
    state = {k: v for k, v in read_weights(path).items() if not k.startswith("task_segmenter.")}  # stage 1's task head: not a translator part
    try:
        drl.load_state_dict(state)  # TrainedFor refuses weights trained for another image size or normalisation
    except RuntimeError as e:
        details = " ".join(str(e).split("\n", 1)[-1].split())
        raise DataError(path, f"does not fit this configuration (DRLModule sizes, image size or intensity settings): {details[:500]}") from e
    return DiverseStyleTransfer(drl, source, target)
