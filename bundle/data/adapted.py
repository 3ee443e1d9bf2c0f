"""Stage-2 training slices (pipeline steps 4-5): labelled slices as the UNet sees them.

DADR: content-only images of the slices. DACGAN baseline: CT slices translated to MR by the
CycleGAN, the MR slices as they are. Without adaptation: the slices themselves. The networks
that adapt are frozen during stage 2, so each slice is adapted once, here, instead of at every
iteration; augmentation then acts on the adapted images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from monai.utils import evenly_divisible_all_gather
from torch import nn
from torch.utils.data import Dataset

from bundle.data.slices import volume_slices
from bundle.errors import DataError
from bundle.networks.content_only import ContentOnly
from bundle.networks.segmenter import LiverSegmenter

__all__ = ["AdaptedSlices"]


class AdaptedSlices(Dataset):
    """Adapted slices with liver labels, from labelled volumes of one or both modalities.

    Args:
        data: volume entries ``{"image", "label"[, "modality"]}`` (paths); the ``data`` MONAI
            Label's bundle trainer fills in. Entries without ``modality`` are ``modality``.
        network: the inference network; its frozen content path makes the content-only images
            (with ``adaptation="none"`` it leaves the slices as they are).
        modality: default modality of the entries, ``ct`` or ``mr``.
        transform: dict transform applied to every item (augmentation), or ``None``.
        translator: a frozen CT-to-MR generator (DACGAN baseline) applied to the CT slices first, or ``None``.
        batch_size: slices per forward pass.
        label_key: the entries' key of the label map to train on: ``label`` (the liver mask) or
            ``organs`` (the organ map of ``prepare_data.py case --organs``: liver, kidneys, spleen).
        tissue_key: the entries' key of their whole label map (``prepare_data.py case --label_map``),
            given with the slices of the entries that have one as item key ``tissues`` (what
            ``bundle.synthesis.RandTissueSynthesisd`` re-renders), or ``None``. Only for slices as
            they are (no content path, no translator): the tissue classes read their CT values.
        preprocessing: ``ct_window``, ``mr_percentiles`` and ``context_slices`` of ``volume_slices``.
    """

    def __init__(self, data: list[dict], network: LiverSegmenter, modality: str = "ct",
                 transform: Callable | None = None, translator: nn.Module | None = None, batch_size: int = 32, label_key: str = "label",
                 tissue_key: str | None = None, **preprocessing) -> None:
        if missing := [e["image"] for e in data if label_key not in e]:
            raise DataError(missing[0], f"has no {label_key!r} label map in the datalist ({len(missing)} such entries)"
                                        + ("; make organ maps with prepare_data.py case --organs" if label_key == "organs" else ""))
        if tissue_key and (translator is not None or isinstance(network.content_path, ContentOnly)):
            raise ValueError("the synthetic source re-renders CT slices as they are: it needs --adaptation none")
        tissue_maps = [{**e, "label": e[tissue_key]} for e in data if tissue_key and tissue_key in e]
        data = [{**e, "label": e[label_key]} for e in data]
        images, labels = [], []
        for mod in ("ct", "mr"):
            entries = [e for e in data if e.get("modality", modality) == mod]
            if not entries:
                continue
            slices = volume_slices(entries, mod, network.image_size, with_label=True, source=entries[0]["image"], **preprocessing)
            adapted = slices["image"]
            if translator is not None and mod == "ct":
                adapted, mod = self._apply(translator, adapted, batch_size, translator), "mr"
            path = network.content_path
            if isinstance(path, ContentOnly):  # always in eval mode (LiverSegmenter)
                adapted = self._apply(lambda x, m=mod, p=path: p.content_only(x, m), adapted, batch_size, path)
            images.append(adapted)
            labels.append(slices["label"])
        empty = torch.empty(0, 1, network.image_size, network.image_size)
        self.images, self.labels = torch.cat(images or [empty]), torch.cat(labels or [empty])
        self.tissues = None
        if tissue_maps:  # the same volumes in the same order as the images' first entries, so slice i is image i's
            if any(e.get("modality", modality) != "ct" for e in tissue_maps) or len(tissue_maps) != sum(e.get("modality", modality) == "ct" for e in data):
                raise DataError(tissue_maps[0]["image"], f"the synthetic source needs a {tissue_key!r} label map for every CT entry and none for MR")
            slices = volume_slices(tissue_maps, "ct", network.image_size, with_label=True, source=tissue_maps[0]["image"], **preprocessing)
            self.tissues = slices["label"].to(torch.uint8)
        self.transform = transform

    @staticmethod
    @torch.no_grad()
    def _apply(function: Callable, images: torch.Tensor, batch_size: int, owner: nn.Module) -> torch.Tensor:
        """``function`` of the images in batches, channel by channel (a 2.5D input's adjacent
        slices each), on the device of ``owner``'s weights. Under torch.distributed each rank
        adapts its 1/N of the images and MONAI's ``evenly_divisible_all_gather`` shares them:
        computed once, not N times."""
        device = next(owner.parameters()).device
        n, c = images.shape[:2]
        flat = images.reshape(n * c, 1, *images.shape[2:])
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        share = flat.tensor_split(world)[rank]
        adapted = torch.cat([function(batch.to(device)) for batch in share.split(batch_size)] or [function(share.to(device))])
        if world > 1:
            adapted = evenly_divisible_all_gather(adapted)  # the ranks' shares, in rank order
        return adapted.cpu().reshape(n, c, *images.shape[2:])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i], "label": self.labels[i]}
        if self.tissues is not None and i < len(self.tissues):  # the CT slices come first
            item["tissues"] = self.tissues[i]
        return self.transform(item) if self.transform is not None else item

