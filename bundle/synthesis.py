"""The contrast-agnostic source: labelled CT slices re-rendered with a random intensity per tissue.

A UNet trained on CT learns CT's grey levels; on MR the liver can be brighter or darker than
anything around it (a T2 liver with iron overload is darker than muscle), which no global
intensity remapping of CT produces, because it moves every tissue of one grey level together.
SynthSeg (Billot et al., Medical Image Analysis 2023) trains on images synthesised from label
maps with an independent random Gaussian per label, so that no grey level and no ordering of
tissues can be relied on. Here the labels are the source's organ labels (SABS: 13 organs) plus
the tissue classes of the unlabelled body taken from the CT values (gas and air, fat, soft
tissue, bone or contrast); the CT's own texture inside each class (vessels in the liver, bowel
content) is blended back at random strength and sign, then the slice is degraded as MR is
(partial-volume blur, lower resolution, a coil bias field, Rician noise) and normalised like MR
(robust percentiles to [-1, 1]). Written from the paper's description; MONAI has the
degradations, not the per-label rendering.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    GaussianSmooth,
    MapTransform,
    RandBiasField,
    RandomizableTransform,
    RandRicianNoise,
    RandSimulateLowResolution,
)

from bundle.data.intensity import CT_WINDOW, MR_PERCENTILES

__all__ = ["RandTissueSynthesisd", "tissue_classes", "TISSUE_HU", "BODY_CLASS"]

# HU bounds of the unlabelled tissue classes: gas and air | fat | soft tissue | bone and contrast
TISSUE_HU = (-110.0, -30.0, 150.0)
BODY_CLASS = 256  # class id of the first unlabelled tissue (air); organ labels keep their ids 1..255


def tissue_classes(image: torch.Tensor, labels: torch.Tensor, ct_window: Sequence[float] = CT_WINDOW,
                   tissue_hu: Sequence[float] = TISSUE_HU) -> torch.Tensor:
    """Class of every pixel: its organ label where it has one, otherwise ``BODY_CLASS`` + the
    index of its HU bin (``tissue_hu``) in the CT ``image`` normalised from ``ct_window`` to [-1, 1]."""
    low, high = map(float, ct_window)
    hu = (image.float() + 1) / 2 * (high - low) + low
    body = BODY_CLASS + torch.bucketize(hu, torch.tensor([float(t) for t in tissue_hu]))
    labels = labels.long()
    return torch.where(labels > 0, labels, body)


class RandTissueSynthesisd(RandomizableTransform, MapTransform):
    """A labelled CT slice -> a synthetic image of random contrast, same anatomy, same labels.

    Per call: every class (``tissue_classes``) draws a mean ~ U(-1, 1) and a standard deviation
    ~ U(``std_range``); the CT's deviation from its class mean is added back with one gain
    ~ U(``texture_range``) and a random sign per class; with ``dark_background_prob`` air and
    gas stay the darkest class (as in any MR). With ``liver_extreme_prob`` the liver (the class
    of most of the pixels the item's ``label`` marks 1) is made the darkest class, as dark as
    air, or the brightest, half the time each: a liver darker than muscle and close to the
    background (iron overload on T2) is otherwise rare among random draws, and the network
    learns that the darkest tissue is outside the body. Then, each with probability 0.5, a Gaussian blur
    (``blur_sigma``), a lower resolution (``zoom_range``, MONAI ``RandSimulateLowResolution``), a
    bias field (``bias_coeff``, MONAI ``RandBiasField``) and Rician noise (``noise_std``, MONAI
    ``RandRicianNoise``); last, the ``percentiles`` of the slice map to [-1, 1] as MR's do.

    The item's ``tissue_key`` (the source's label map, uint8 ids, same grid) is consumed and
    removed; items without it (MR in joint training) pass unchanged. The item's ``label`` is
    never read or changed. One channel only (no 2.5D context): the label map is one slice's.

    Args:
        keys: the image key.
        tissue_key: key of the label map.
        prob: probability of re-rendering a slice (the rest stay CT).
        ct_window: the HU window the image was normalised from (for the tissue classes).
    """

    backend = [torch.Tensor]

    def __init__(self, keys: KeysCollection = "image", tissue_key: str = "tissues", label_key: str = "label", prob: float = 0.8,
                 ct_window: Sequence[float] = CT_WINDOW, tissue_hu: Sequence[float] = TISSUE_HU,
                 std_range: Sequence[float] = (0.0, 0.15), texture_range: Sequence[float] = (0.0, 1.5),
                 dark_background_prob: float = 0.8, liver_extreme_prob: float = 0.0, blur_sigma: Sequence[float] = (0.0, 1.0),
                 zoom_range: Sequence[float] = (0.4, 1.0), bias_coeff: Sequence[float] = (0.0, 0.6),
                 noise_std: Sequence[float] = (0.0, 0.05), percentiles: Sequence[float] = MR_PERCENTILES) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob)
        self.tissue_key, self.label_key, self.ct_window, self.tissue_hu = tissue_key, label_key, tuple(ct_window), tuple(tissue_hu)
        self.liver_extreme_prob = liver_extreme_prob
        self.std_range, self.texture_range, self.blur_sigma = tuple(std_range), tuple(texture_range), tuple(blur_sigma)
        self.dark_background_prob = dark_background_prob
        self.low_resolution = RandSimulateLowResolution(prob=0.5, downsample_mode="area", upsample_mode="bilinear", zoom_range=zoom_range)
        self.bias_field = RandBiasField(coeff_range=tuple(bias_coeff), prob=0.5)
        self.noise = RandRicianNoise(prob=0.5, std=float(max(noise_std)), relative=False, sample_std=True)
        self.percentiles = tuple(map(float, percentiles))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandTissueSynthesisd:
        super().set_random_state(seed, state)
        for component in (self.low_resolution, self.bias_field, self.noise):
            component.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        super().randomize(None)

    def render(self, image: torch.Tensor, labels: torch.Tensor, liver: torch.Tensor | None = None) -> torch.Tensor:
        """The synthetic image (1, H, W) of a CT slice ``image`` (1, H, W, in [-1, 1]), its label map and
        (for ``liver_extreme_prob``) its liver mask."""
        x = torch.as_tensor(image, dtype=torch.float32)
        if x.shape[0] != 1:
            raise ValueError(f"the synthetic source renders one-channel slices, got {x.shape[0]} channels (2.5D input: --context_slices 0)")
        classes = tissue_classes(x, torch.as_tensor(labels), self.ct_window, self.tissue_hu)
        ids, index = torch.unique(classes, return_inverse=True)
        n = len(ids)
        means = torch.as_tensor(self.R.uniform(-1.0, 1.0, n), dtype=torch.float32)
        if self.R.uniform() < self.dark_background_prob and (air := (ids == BODY_CLASS).nonzero()).numel():
            others = means[ids != BODY_CLASS]
            floor = float(others.min()) if others.numel() else 0.0
            means[air[0, 0]] = floor - float(self.R.uniform(0.05, 0.4))
        if liver is not None and self.R.uniform() < self.liver_extreme_prob and (liver > 0).any():
            own = int(torch.mode(index[liver > 0]).values)  # the liver's class
            others = torch.cat([means[:own], means[own + 1 :]])
            if others.numel():
                dark = self.R.uniform() < 0.5
                edge = float(others.min()) if dark else float(others.max())
                means[own] = edge + float(self.R.uniform(-0.1, 0.1)) + (-0.05 if dark else 0.05)
        stds = torch.as_tensor(self.R.uniform(*self.std_range, n), dtype=torch.float32)
        signs = torch.as_tensor(self.R.choice([-1.0, 1.0], n), dtype=torch.float32)
        gain = float(self.R.uniform(*self.texture_range))
        count = torch.bincount(index.flatten(), minlength=n).float()
        ct_means = torch.bincount(index.flatten(), weights=x.flatten(), minlength=n) / count.clamp(min=1)
        texture = (x - ct_means[index]) * signs[index] * gain
        noise = torch.as_tensor(self.R.standard_normal(x.shape), dtype=torch.float32)
        y = means[index] + stds[index] * noise + texture
        sigma = float(self.R.uniform(*self.blur_sigma))
        if self.R.uniform() < 0.5 and sigma > 0:  # partial volume
            y = GaussianSmooth(sigma)(y)
        y = torch.as_tensor(self.low_resolution(y), dtype=torch.float32)
        y = y - y.min()  # the field multiplies and the noise is Rician: both act on non-negative signal
        y = torch.as_tensor(self.noise(torch.as_tensor(self.bias_field(y), dtype=torch.float32))).as_subclass(torch.Tensor)
        # MR's normalisation (ScaleIntensityRangePercentiles), with numpy's percentiles: MONAI's take 8 ms a slice here
        low, high = np.percentile(y.numpy(), self.percentiles)
        return ((y - low) / max(high - low, 1e-6) * 2 - 1).clamp(-1, 1)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        labels = d.pop(self.tissue_key, None)
        self.randomize()
        if labels is None or not self._do_transform:
            return d
        liver = None if d.get(self.label_key) is None else torch.as_tensor(d[self.label_key]) == 1
        for key in self.key_iterator(d):
            d[key] = self.render(d[key], labels, liver).to(d[key].dtype if isinstance(d[key], torch.Tensor) else torch.float32)
        return d
