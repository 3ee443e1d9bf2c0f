"""Evaluation (pipeline step 7): Dice, HD95 and ASSD per subject on a labelled datalist section.

Each volume is segmented by the inference runner (so the numbers are those of the shipped
pipeline, outputs on disk included) and compared with its mask on the image's own grid, in mm.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

from bundle.atomic import atomic_outputs
from bundle.data.readers import case_name, read_image
from bundle.data.datalist import read_datalist
from bundle.errors import DataError
from bundle.inference import SegmentVolumes
from bundle.quality import QUALITY_FIELDS

__all__ = ["surface_metrics", "summarise", "EvaluateVolumes", "METRICS"]

logger = logging.getLogger(__name__)

METRICS = ("dice", "hd95_mm", "assd_mm")


def surface_metrics(pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Dice, 95th-percentile Hausdorff distance and average symmetric surface distance (mm).

    Distances are NaN when either mask is empty (no surface to measure).
    """
    onehot = [torch.as_tensor(np.stack([m == 0, m > 0]))[None] for m in (pred, label)]
    dice = float(compute_dice(*onehot, include_background=False))
    if not pred.any() or not label.any():
        return {"dice": dice, "hd95_mm": math.nan, "assd_mm": math.nan}
    hd95 = float(compute_hausdorff_distance(*onehot, percentile=95, spacing=list(spacing)))
    assd = float(compute_average_surface_distance(*onehot, symmetric=True, spacing=list(spacing)))
    return {"dice": dice, "hd95_mm": hd95, "assd_mm": assd}


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation of each metric over subjects, NaNs left out."""
    out = {}
    for metric in METRICS:
        values = np.array([r[metric] for r in rows], dtype=float)
        values = values[np.isfinite(values)]
        out[metric] = {"mean": float(values.mean()) if len(values) else math.nan,
                       "std": float(values.std()) if len(values) else math.nan, "n": int(len(values))}
    return out


class EvaluateVolumes:
    """Segment every volume of a labelled datalist section and score it against its mask.

    Writes ``metrics.csv`` (one row per subject) and ``metrics.json`` (rows + mean/std) to
    ``output_dir``, next to the predicted masks.

    Args:
        segmenter: the inference runner (``configs/inference.yaml``, ``segment_volumes``).
        datalist: datalist JSON file.
        section: labelled section to evaluate (``target_test``).
        output_dir: where the predictions and the metric files go.
    """

    def __init__(self, segmenter: SegmentVolumes, datalist: str | Path, section: str, output_dir: str | Path) -> None:
        self.segmenter, self.datalist, self.section, self.output_dir = segmenter, datalist, section, Path(output_dir)

    def __call__(self) -> dict:
        entries = read_datalist(self.datalist, self.section)
        if missing := [e["image"] for e in entries if "label" not in e]:
            raise DataError(self.datalist, f"section {self.section!r} has no label for {missing[0]} (and {len(missing) - 1} more)")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for entry in entries:
            image = Path(entry["image"])
            outputs, affine, quality = self.segmenter.predict(image)  # scored in memory, written for inspection
            self.segmenter.write(case_name(image), outputs, affine, self.output_dir)
            mask = outputs["liver"]
            label = read_image(entry["label"]).image
            truth = sitk.GetArrayViewFromImage(label).transpose(2, 1, 0) > 0  # (x, y, z), as the prediction
            if mask.shape != truth.shape:
                raise DataError(entry["label"], f"is {truth.shape} voxels but its image {entry['image']} is {mask.shape}")
            row = {"subject": entry.get("subject", image.name), "image": entry["image"]}
            row |= surface_metrics(mask > 0, truth, label.GetSpacing())
            if quality is not None:  # the quality numbers and flags beside the scores: what the flags are calibrated on
                row |= {k: quality[k] for k in QUALITY_FIELDS} | {"flags": "; ".join(quality["flags"])}
            logger.info("%s: Dice %.3f, HD95 %.1f mm, ASSD %.1f mm", row["subject"], row["dice"], row["hd95_mm"], row["assd_mm"])
            rows.append(row)
        result = {"datalist": str(self.datalist), "section": self.section, "subjects": rows, "summary": summarise(rows)}
        with atomic_outputs([self.output_dir / "metrics.csv", self.output_dir / "metrics.json"]) as (tmp_csv, tmp_json):
            with open(tmp_csv, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["subject", *METRICS, *(QUALITY_FIELDS + ("flags",) if rows and "flags" in rows[0] else ()), "image"])
                writer.writeheader()
                writer.writerows(rows)
            tmp_json.write_text(json.dumps(result, indent=2))
        s = result["summary"]
        logger.info("mean (std) over %d subjects: Dice %.3f (%.3f), HD95 %.1f (%.1f) mm, ASSD %.1f (%.1f) mm", len(rows),
                    s["dice"]["mean"], s["dice"]["std"], s["hd95_mm"]["mean"], s["hd95_mm"]["std"], s["assd_mm"]["mean"], s["assd_mm"]["std"])
        return result
