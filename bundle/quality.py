"""Per-case quality control: the numbers that tell a failed mask from a good one, and flags with reasons.

A liver model that fails says nothing by itself: on a patient whose liver is dark on T2 the
model marked 118 mL of a ~1,900 mL liver and exited 0. A user segmenting a cohort cannot open
every mask, so every case gets cheap numbers computed from what inference already has (the
mask, the probabilities, the dual path's two paths, the ensemble's entropy) and flags when a
number is outside what good cases show. Thresholds are configuration (``inference.yaml``
``quality``), chosen on the dev patients' cross-validated predictions and the robustness suite
(docs/RESULTS.md, "Quality control").

``CaseQualityd`` is the last step of inference's postprocessing, so the bundle's own inference,
its evaluation and MONAI Label's infer task all compute the same numbers.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from bundle.atomic import atomic_outputs
from bundle.data.orientation import anatomical_axis

__all__ = ["QUALITY_FIELDS", "FAILURE_FLAGS", "failed", "FallbackPathd", "KeepLargestComponentd", "case_quality", "quality_flags", "CaseQualityd", "write_summary", "flag_rates"]

# what every case reports (summary.csv's columns, after the case and before the flags)
QUALITY_FIELDS = ("liver_ml", "confidence", "paths_dice", "uncertainty", "touches_top", "touches_bottom", "components_removed", "removed_ml",
                  "fallback")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


class FallbackPathd(MapTransform):
    """A fallback pair's per-case choice (``--adaptation fallback``): where the first UNet's mask fails
    the quality checks (a flag of ``FAILURE_FLAGS`` under ``thresholds``: an implausible volume, a low
    confidence...), the class probabilities ``keys`` (after softmax, on the input's grid) become the
    second UNet's (its liver probability: channel 1 of ``paths_key``), and ``data[fallback_key]`` says
    why; otherwise nothing changes. The first UNet is the better one on the scans it knows, the second
    (the contrast-agnostic source) the one that holds on a liver it has never seen (docs/RESULTS.md):
    the checks that flag a failure pick between them. ``enabled``: false for other models."""

    def __init__(self, keys: str = "pred", paths_key: str = "paths", enabled: bool = True, thresholds: dict | None = None,
                 fallback_key: str = "fallback") -> None:
        super().__init__(keys)
        self.paths_key, self.enabled, self.fallback_key = paths_key, enabled, fallback_key
        self.thresholds = {k: v for k, v in (thresholds or {}).items() if k != "fov_cut"} | {"fov_cut": "none"}

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        if not self.enabled or d.get(self.paths_key) is None:
            return d
        key = self.first_key(d)
        probabilities, paths = d[key], torch.as_tensor(d[self.paths_key])
        affine = np.asarray(getattr(probabilities, "affine", torch.eye(4)), dtype=np.float64)
        first = np.asarray(torch.as_tensor(probabilities).max(dim=0).indices.cpu()) == 1
        numbers = case_quality(first, np.asarray(paths[0].float().cpu()), affine)
        reasons = failed(quality_flags(numbers, **self.thresholds))
        if reasons:
            liver = paths[1:2].to(probabilities.dtype)
            replaced = torch.zeros_like(probabilities)
            replaced[0:1], replaced[1:2] = 1 - liver, liver
            d[key] = replaced
            d[self.fallback_key] = "; ".join(reasons)
        return d


class KeepLargestComponentd(MapTransform):
    """The liver's largest 3D component (26-connected), as MONAI's ``KeepLargestConnectedComponentd``
    with ``applied_labels [1]``, recording what it removed: ``data[removed_key]`` = ``{"components",
    "voxels"}`` for the quality numbers. MONAI's keeps no record, and labelling the mask a second time
    to count the islands would cost as much again (60 ms a 256 x 256 x 40 volume here). ``enabled``
    false keeps every voxel (and records nothing removed)."""

    def __init__(self, keys: str = "pred", enabled: bool = True, removed_key: str = "removed") -> None:
        super().__init__(keys)
        self.enabled, self.removed_key = enabled, removed_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            liver = np.asarray(torch.as_tensor(mask)[0].cpu()) == 1
            d[self.removed_key] = {"components": 0, "voxels": 0}
            if not self.enabled or not liver.any():
                continue
            labels, n = ndimage.label(liver, structure=np.ones((3, 3, 3)))
            if n > 1:
                sizes = np.bincount(labels.ravel())
                sizes[0] = 0
                keep = labels == sizes.argmax()
                d[key] = mask * torch.as_tensor(keep, device=mask.device)[None].to(mask.dtype)
                d[self.removed_key] = {"components": n - 1, "voxels": int(liver.sum() - keep.sum())}
        return d


def case_quality(mask: np.ndarray, liver_probability: np.ndarray, affine: np.ndarray, removed: dict | None = None,
                 paths: np.ndarray | None = None, entropy: np.ndarray | None = None) -> dict:
    """The quality numbers of one case, every array on the case's own grid (3D):

    - ``liver_ml``: the mask's volume;
    - ``confidence``: the mean liver probability over the mask (0 for an empty mask);
    - ``paths_dice``: Dice between the masks of the dual path's two paths (``paths``: their liver
      probabilities, (2, X, Y, Z)), ``None`` for a one-path model;
    - ``uncertainty``: the ensemble's entropy summed over the volume per mask voxel (``entropy``), or
      ``None``: doubt anywhere counts (a missed lobe lies outside the mask), the liver's size does not;
    - ``touches_top`` / ``touches_bottom``: whether the mask reaches the volume's most superior /
      inferior slice (a field of view that cuts the liver);
    - ``components_removed`` / ``removed_ml``: the liver islands the largest-component step dropped
      (``removed``: :class:`KeepLargestComponentd`'s record) and their volume;
    - ``fallback``: whether a fallback pair's second UNet made the mask (set by :class:`CaseQualityd`).
    """
    mask = np.asarray(mask) > 0
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    axis, sign = anatomical_axis(affine, "S")
    extent = mask.any(axis=tuple(i for i in range(3) if i != axis))
    top, bottom = (extent[-1], extent[0]) if sign > 0 else (extent[0], extent[-1])
    numbers = {"liver_ml": round(float(mask.sum()) * voxel_ml, 1),
               "confidence": round(float(liver_probability[mask].mean()) if mask.any() else 0.0, 4),
               "paths_dice": None if paths is None else round(_dice(paths[0] > 0.5, paths[1] > 0.5), 4),
               "uncertainty": None if entropy is None else round(float(entropy.sum(dtype=np.float64) / max(int(mask.sum()), 1)), 4),
               "touches_top": bool(top), "touches_bottom": bool(bottom), "components_removed": 0, "removed_ml": 0.0,
               "fallback": False}
    if removed is not None:
        numbers["components_removed"] = int(removed["components"])
        numbers["removed_ml"] = round(float(removed["voxels"]) * voxel_ml, 1)
    return numbers


# the flags that say the mask may be wrong; cut_by_fov says the scan misses part of the liver, whatever the mask
FAILURE_FLAGS = ("implausible_volume", "low_confidence", "low_agreement", "high_uncertainty")
FOV_CUT = ("none", "top", "both")  # quality_flags(fov_cut=...): which end of the scan a liver may not reach


def quality_flags(numbers: dict, liver_ml: Sequence[float] = (700.0, 3500.0), min_confidence: float = 0.0,
                  min_paths_dice: float = 0.0, max_uncertainty: float = math.inf, fov_cut: str = "both") -> list[str]:
    """The flags of a case's ``numbers``, each with its reason: ``implausible_volume``, ``low_confidence``,
    ``low_agreement`` (the dual path's two paths), ``high_uncertainty`` (the ensemble), ``cut_by_fov``
    (``fov_cut``: the liver reaches the top slice, or either end; ``none``: never)."""
    if fov_cut not in FOV_CUT:
        raise ValueError(f"fov_cut must be one of {FOV_CUT}, got {fov_cut!r}")
    flags = []
    low, high = map(float, liver_ml)
    if not low <= numbers["liver_ml"] <= high:
        flags.append(f"implausible_volume: {numbers['liver_ml']:.0f} mL, adult livers {low:.0f}-{high:.0f} mL")
    if numbers["liver_ml"] > 0 and numbers["confidence"] < min_confidence:
        flags.append(f"low_confidence: mean liver probability {numbers['confidence']:.3f} < {min_confidence}")
    if numbers.get("paths_dice") is not None and numbers["paths_dice"] < min_paths_dice:
        flags.append(f"low_agreement: the two paths' masks agree with Dice {numbers['paths_dice']:.3f} < {min_paths_dice}")
    if numbers.get("uncertainty") is not None and numbers["uncertainty"] > max_uncertainty:
        flags.append(f"high_uncertainty: {numbers['uncertainty']:.2f} > {max_uncertainty}")
    ends = [end for end in ("top", "bottom") if numbers[f"touches_{end}"] and (fov_cut == "both" or fov_cut == end)]
    if ends:
        ends = " and ".join(ends)
        flags.append(f"cut_by_fov: the liver reaches the {ends} slice, part of it may lie outside the scan")
    return flags


def failed(flags: list[str]) -> list[str]:
    """The ``flags`` that say the mask itself may be wrong (``FAILURE_FLAGS``)."""
    return [f for f in flags if f.split(":", 1)[0] in FAILURE_FLAGS]


class CaseQualityd(MapTransform):
    """Postprocessing's last step: ``data["quality"]`` = the case's numbers (:func:`case_quality`) and
    ``"flags"`` (:func:`quality_flags` under ``thresholds``), from the final mask ``keys`` and the items
    the earlier steps kept on the input's grid: ``probabilities_key`` (class probabilities),
    ``removed_key`` (:class:`KeepLargestComponentd`'s record), ``paths_key`` (the dual path's two
    paths' liver probabilities) and ``uncertainty_key``. The helper items are removed. With
    ``result_key``, the same dict also goes to ``data[result_key]["quality"]``: MONAI Label returns
    its item ``result`` in the infer response, so a Slicer user sees the numbers and flags."""

    def __init__(self, keys: str = "pred", probabilities_key: str = "probabilities", removed_key: str = "removed", paths_key: str = "paths",
                 uncertainty_key: str = "uncertainty", thresholds: dict | None = None, result_key: str | None = None,
                 fallback_key: str = "fallback") -> None:
        super().__init__(keys)
        self.result_key, self.fallback_key = result_key, fallback_key
        self.probabilities_key, self.removed_key, self.paths_key, self.uncertainty_key = probabilities_key, removed_key, paths_key, uncertainty_key
        self.thresholds = dict(thresholds or {})

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        key = self.first_key(d)
        mask = torch.as_tensor(d[key])
        affine = np.asarray(getattr(d[key], "affine", torch.eye(4)), dtype=np.float64)
        array = lambda k: None if d.get(k) is None else np.asarray(torch.as_tensor(d[k]).detach().cpu().float())
        probabilities, paths, entropy = array(self.probabilities_key), array(self.paths_key), array(self.uncertainty_key)
        numbers = case_quality(np.asarray(mask[0]), probabilities[1], affine, d.get(self.removed_key), paths,
                               None if entropy is None else entropy[0])
        flags = quality_flags(numbers, **self.thresholds)
        if d.get(self.fallback_key):
            flags.append(f"fallback: the first UNet's mask failed ({d[self.fallback_key]}); this mask is the fallback UNet's")
        d["quality"] = numbers | {"fallback": bool(d.get(self.fallback_key)), "flags": flags}
        if self.result_key:
            d[self.result_key] = {**d.get(self.result_key, {}), "quality": d["quality"]}
        for k in (self.probabilities_key, self.removed_key, self.paths_key, self.fallback_key):
            d.pop(k, None)
        return d


def flag_rates(rows: list[dict], failed_below: float = 0.70, good_from: float = 0.80, **thresholds) -> dict:
    """How well flags under ``thresholds`` (:func:`quality_flags`) separate ``rows`` (cases with ``dice`` and the
    quality numbers): the cases below ``failed_below`` and how many are flagged, the cases from
    ``good_from`` and how many are flagged (false alarms). A case that a fallback pair's second UNet
    segmented is flagged whatever the thresholds (inference says so)."""
    flagged = [bool(quality_flags(r, **thresholds)) or str(r.get("fallback", False)) not in ("False", "", "None") for r in rows]
    failed = [f for r, f in zip(rows, flagged) if r["dice"] < failed_below]
    good = [f for r, f in zip(rows, flagged) if r["dice"] >= good_from]
    return {"failed": len(failed), "failed_flagged": sum(failed), "good": len(good), "good_flagged": sum(good)}


def write_summary(rows: list[dict], path: str | Path) -> Path:
    """``path`` (summary.csv), atomically: one row per case, ``case`` and ``file``, the quality numbers,
    ``flagged`` and ``flags`` (reasons joined by ``; ``)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["case", "file", *QUALITY_FIELDS, "flagged", "flags"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "flagged": bool(row["flags"]), "flags": "; ".join(row["flags"])})
    path = Path(path)
    with atomic_outputs([path]) as (tmp,):
        tmp.write_text(text.getvalue())
    return path
