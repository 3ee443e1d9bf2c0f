"""Volume preprocessing (pipeline step 2): load with our reader, refuse blank images, RAS,
per-modality intensity to [-1, 1], optional adjacent slices as channels.

Training and inference build the same transforms here, so a model sees at inference exactly
the volumes it was trained on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)

from bundle.data.intensity import CT_WINDOW, MR_PERCENTILES
from bundle.data.readers import LoadVolumed, check_contrast

__all__ = ["AdjacentSlicesd", "CheckContrastd", "volume_transform"]


class AdjacentSlicesd(MapTransform):
    """2.5D input: each axial slice gets its ``context`` neighbours on either side as channels.

    (1, H, W, D) -> (1 + 2 * context, H, W, D), channel ``context`` being the slice itself and the
    first and last slices repeated at the ends. A 2D network then sees each slice with the
    anatomy above and below it, and MONAI's ``SliceInferer`` cuts the same channels at inference.
    MONAI has no such transform. It changes channels only, so nothing is inverted afterwards.
    """

    def __init__(self, keys: str | Sequence[str], context: int = 1) -> None:
        super().__init__(keys)
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.context = context

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = d[key]
            if volume.shape[0] != 1:
                raise ValueError(f"{key}: expected one channel, got shape {tuple(volume.shape)}")
            if self.context == 0:
                continue
            depth = volume.shape[-1]
            index = [min(max(z + k, 0), depth - 1) for k in range(-self.context, self.context + 1) for z in range(depth)]
            # contiguous: a strided view would reach the networks in another memory format
            d[key] = volume[0][..., index].reshape(*volume.shape[1:-1], 1 + 2 * self.context, depth).movedim(-2, 0).contiguous()
        return d


class CheckContrastd(MapTransform):
    """Refuse a blank image before it is normalised (``check_contrast``): a constant volume, or an
    MR volume whose normalisation percentiles coincide, would otherwise get a made-up liver."""

    def __init__(self, keys: str | Sequence[str], percentiles: Sequence[float] | None = None) -> None:
        super().__init__(keys)
        self.percentiles = None if percentiles is None else tuple(map(float, percentiles))

    def __call__(self, data: dict) -> dict:
        for key in self.key_iterator(data):
            image = data[key]
            path = image.meta.get("filename_or_obj", key) if hasattr(image, "meta") else key
            check_contrast(np.asarray(image), path, self.percentiles)
        return data


def volume_transform(modality: str, with_label: bool = False, track_meta: bool = False,
                     ct_window: Sequence[float] = CT_WINDOW, mr_percentiles: Sequence[float] = MR_PERCENTILES,
                     context_slices: int = 0) -> Compose:
    """Deterministic volume preprocessing: load, channel first, RAS, per-modality intensity
    [, adjacent slices as channels].

    Training drops the metadata; inference keeps it (``track_meta``) to invert the reorientation.
    ``ct_window`` (HU) and ``mr_percentiles`` map to [-1, 1]; every stage must use the same ones.
    ``context_slices``: neighbours on each side given as channels (2.5D input), or 0.
    """
    keys = ["image", "label"] if with_label else ["image"]
    if modality == "ct":
        normalise = ScaleIntensityRanged("image", *map(float, ct_window), b_min=-1.0, b_max=1.0, clip=True)
    elif modality == "mr":
        normalise = ScaleIntensityRangePercentilesd("image", *map(float, mr_percentiles), b_min=-1.0, b_max=1.0, clip=True)
    else:
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    return Compose([
        LoadVolumed(keys),
        CheckContrastd("image", mr_percentiles if modality == "mr" else None),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        normalise,
        EnsureTyped(keys, dtype=torch.float32, track_meta=track_meta),
        AdjacentSlicesd("image", context_slices),
    ])
