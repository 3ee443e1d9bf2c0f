"""Stage-2 training slices (pipeline steps 4-5): labelled slices turned into content-only images.

The content path is frozen during stage 2, so each slice's content-only image is computed once,
here, instead of at every iteration; augmentation then acts on the content-only images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from bundle.data.slices import volume_slices
from bundle.networks.segmenter import ContentOnly, LiverSegmenter

__all__ = ["ContentOnlySlices"]


class ContentOnlySlices(Dataset):
    """Content-only slices with liver labels, from labelled volumes of one or both modalities.

    Args:
        data: volume entries ``{"image", "label"[, "modality"]}`` (paths); the ``data`` MONAI
            Label's bundle trainer fills in. Entries without ``modality`` are ``modality``.
        network: the inference network whose frozen content path makes the content-only images
            (with ``adaptation="none"`` the slices are used as they are).
        modality: default modality of the entries, ``ct`` or ``mr``.
        transform: dict transform applied to every item (augmentation), or ``None``.
        batch_size: slices per forward pass of the content path.
    """

    def __init__(self, data: list[dict], network: LiverSegmenter, modality: str = "ct",
                 transform: Callable | None = None, batch_size: int = 32) -> None:
        images, labels = [], []
        for mod in ("ct", "mr"):
            entries = [e for e in data if e.get("modality", modality) == mod]
            if not entries:
                continue
            slices = volume_slices(entries, mod, network.image_size, with_label=True, source=entries[0]["image"])
            images.append(self._content_only(network, slices["image"], mod, batch_size))
            labels.append(slices["label"])
        empty = torch.empty(0, 1, network.image_size, network.image_size)
        self.images, self.labels = torch.cat(images or [empty]), torch.cat(labels or [empty])
        self.transform = transform

    @staticmethod
    @torch.no_grad()
    def _content_only(network: LiverSegmenter, images: torch.Tensor, modality: str, batch_size: int) -> torch.Tensor:
        path = network.content_path
        if not isinstance(path, ContentOnly):
            return images
        device = next(path.parameters()).device  # the path is always in eval mode (LiverSegmenter)
        return torch.cat([path.content_only(batch.to(device), modality).cpu() for batch in images.split(batch_size)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i], "label": self.labels[i]}
        return self.transform(item) if self.transform is not None else item
