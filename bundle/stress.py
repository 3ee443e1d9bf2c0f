"""The robustness suite: the dev MR under realistic shifts, our proxy for patients nobody here has seen.

A setting chosen on the clean dev patients alone is fitted to them (the shipped model lost
0.09 Dice on new CHAOS T2 patients and missed one whose liver is dark on T2). Each variant
below is built from a labelled dev MR volume and its liver mask, on the volume's own grid
(``cut_dome`` crops it), so that every model is scored on the same shifted patients; the
masks only place the shift (the dark liver) and score, they never train anything.

- ``dark_liver``: the liver's parenchyma scaled to 0.3-0.5 of itself, its brightest voxels
  (vessels, the top ``VESSEL_PERCENTILE``) left as they are: darker than muscle, with bright
  vessels inside, as with iron overload or a fatty liver under fat suppression.
- ``bias_field``: a strong smooth multiplicative field (a 6x range across the body), as from a
  surface coil placed off-centre.
- ``low_snr``: Rician noise of 15% of the liver's median (SNR about 7 in the liver).
- ``low_resolution``: 2x coarser in-plane and 2x thicker slices (averaged), back on the grid.
- ``cut_dome``: a field of view that ends below the liver's dome (its top 30% cut away).
- ``ghosting``: respiratory ghosts along the anterior-posterior (phase-encoding) axis, every
  4th k-space line scaled to 20% (ghosts of 20% of the image a quarter of the field of view apart),
  the usual artefact of a free-breathing abdominal scan.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from torch.nn import functional as F

from bundle.atomic import atomic_outputs
from bundle.data.orientation import anatomical_axis
from bundle.data.readers import case_name
from bundle.errors import DataError

__all__ = ["VARIANTS", "stress_volume", "make_stress_suite", "suite_datalist"]

logger = logging.getLogger(__name__)

VARIANTS = ("dark_liver", "bias_field", "low_snr", "low_resolution", "cut_dome", "ghosting")
VESSEL_PERCENTILE = 90.0  # liver voxels above this percentile of the liver's intensities keep their value (vessels)
DATALIST = "datalist.json"


def stress_volume(image: np.ndarray, liver: np.ndarray, affine: np.ndarray, variant: str,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``variant`` of one MR volume (``image`` float, ``liver`` 0/1, 3D, same grid): (image, liver, affine)."""
    x = image.astype(np.float32)
    inside = liver > 0
    if not inside.any():
        raise ValueError("the liver mask is empty: the variants need the liver")
    median = float(np.median(x[inside]))
    if variant == "dark_liver":
        vessels = x > np.percentile(x[inside], VESSEL_PERCENTILE)
        factor = rng.uniform(0.3, 0.5)
        return np.where(inside & ~vessels, x * factor, x), liver, affine
    if variant == "bias_field":
        grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in x.shape], indexing="ij")
        lr, ap = anatomical_axis(affine, "R")[0], anatomical_axis(affine, "A")[0]
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * grids[lr] + np.sin(angle) * grids[ap]  # a coil off the body's centre, in the axial plane
        field = np.exp(np.log(6.0) / 2 * ramp / np.abs(ramp).max())  # 0.41x to 2.45x
        return x * field.astype(np.float32), liver, affine
    if variant == "low_snr":
        sigma = 0.15 * median
        real, imag = rng.normal(0, sigma, x.shape), rng.normal(0, sigma, x.shape)
        return np.sqrt((x + real) ** 2 + imag**2).astype(np.float32), liver, affine
    if variant == "low_resolution":
        t = torch.as_tensor(x)[None, None]
        low = F.avg_pool3d(t, kernel_size=2, stride=2, ceil_mode=True)
        return F.interpolate(low, size=x.shape, mode="trilinear", align_corners=False)[0, 0].numpy(), liver, affine
    if variant == "cut_dome":
        axis, sign = anatomical_axis(affine, "S")
        z = np.nonzero(inside.any(axis=tuple(i for i in range(3) if i != axis)))[0]
        cut = int(round(0.3 * (z[-1] - z[0] + 1)))
        keep = slice(0, z[-1] + 1 - cut) if sign > 0 else slice(z[0] + cut, x.shape[axis])
        index = tuple(keep if i == axis else slice(None) for i in range(3))
        start = np.zeros(3)
        start[axis] = keep.start
        shifted = affine.copy()
        shifted[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
        return x[index], liver[index], shifted
    if variant == "ghosting":
        axis = anatomical_axis(affine, "A")[0]
        k = np.fft.fftshift(np.fft.fftn(x, axes=(axis,)), axes=(axis,))
        lines = [slice(None)] * 3
        lines[axis] = slice(None, None, 4)
        centre = [slice(None)] * 3
        centre[axis] = x.shape[axis] // 2
        keep_centre = k[tuple(centre)].copy()  # the centre line holds the image's mean: kept, so only ghosts are added
        k[tuple(lines)] *= 0.2
        k[tuple(centre)] = keep_centre
        return np.abs(np.fft.ifftn(np.fft.ifftshift(k, axes=(axis,)), axes=(axis,))).astype(np.float32), liver, affine
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def make_stress_suite(entries: list[dict], out: str | Path, variants: Sequence[str] = VARIANTS, seed: int = 0) -> dict[str, Path]:
    """Every labelled MR of ``entries`` (datalist entries, absolute paths) under each of ``variants``,
    written as ``out/<variant>/<case>_image.nii.gz`` + ``_liver.nii.gz`` with ``out/<variant>/datalist.json``
    (section ``target_test``, the same ``subject`` names). A variant whose datalist exists is kept
    (the suite is made once and reused); the others are (re)made. Returns variant -> datalist."""
    if unknown := [v for v in variants if v not in VARIANTS]:
        raise ValueError(f"unknown stress variants {unknown}; choose from {VARIANTS}")
    entries = [e for e in entries if "label" in e]
    if not entries:
        raise DataError(out, "no labelled MR to build the robustness suite from")
    out = Path(out)
    made = {}
    for index, variant in enumerate(variants):
        folder = out / variant
        made[variant] = folder / DATALIST
        if made[variant].is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        listed = []
        for number, entry in enumerate(entries):
            rng = np.random.default_rng([seed, index, number])
            image, liver = nib.load(entry["image"]), nib.load(entry["label"])
            if not np.allclose(image.affine, liver.affine, atol=1e-3) or image.shape != liver.shape:
                raise DataError(entry["label"], f"is not on the grid of {entry['image']}: prepare it with prepare_data.py case")
            data, mask, affine = stress_volume(np.asarray(image.dataobj, dtype=np.float32), np.asarray(liver.dataobj) > 0,
                                               image.affine, variant, rng)
            name = case_name(entry["image"]).removesuffix("_image")  # prepare_data.py's NAME
            paths = [folder / f"{name}_image.nii.gz", folder / f"{name}_liver.nii.gz"]
            with atomic_outputs(paths) as (tmp_image, tmp_liver):
                nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(tmp_image))
                nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(tmp_liver))
            listed.append({"image": paths[0].name, "label": paths[1].name, "subject": entry.get("subject", name)})
        with atomic_outputs([made[variant]]) as (tmp,):
            tmp.write_text(json.dumps({"target_test": listed}, indent=2) + "\n")
        logger.info("stress suite: %s, %d volumes in %s", variant, len(listed), folder)
    return made


def suite_datalist(variant_datalist: str | Path, subjects: Sequence[str], out: str | Path) -> Path:
    """A datalist of the variant's volumes of ``subjects`` only (a fold's held-out patients) at ``out``."""
    entries = json.loads(Path(variant_datalist).read_text())["target_test"]
    base = Path(variant_datalist).resolve().parent
    chosen = [{**e, "image": str(base / e["image"]), "label": str(base / e["label"])} for e in entries if e["subject"] in set(subjects)]
    if not chosen:
        raise DataError(variant_datalist, f"has none of the subjects {sorted(subjects)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([out]) as (tmp,):
        tmp.write_text(json.dumps({"target_test": chosen}, indent=2) + "\n")
    return out
