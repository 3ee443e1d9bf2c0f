"""Self-training on the target (not in the paper): pseudo-labels of the unlabelled training MR.

A model trained on labelled CT (adapted or not) segments the unlabelled training MR through
``configs/inference.yaml`` with its test-time contrast ensemble; each volume's mask (largest
component) becomes that MR's pseudo-label when it passes the filters below, and stage 2 is trained
again on the labelled CT plus the pseudo-labelled MR (``train.yaml --joint True --joint_section
target_pseudo``). MR labels are never read: the filters look only at the prediction.

Filters are per volume, not per voxel: MONAI's Dice loss has no ignore label, and a whole-volume
error (a liver found in the spleen, a mask over half the abdomen) is the failure that hurts a
retrained model most. A volume is kept when its liver volume is plausible for an adult and when
the ensemble agrees with itself (the mean per-voxel entropy inside the mask is low).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms.utils import get_largest_connected_component_mask

from bundle.atomic import atomic_outputs
from bundle.data.datalist import PSEUDO_SECTION
from bundle.data.readers import case_name
from bundle.errors import DataError
from bundle.pipeline import CONFIGS, run_bundle

__all__ = ["PSEUDO_SECTION", "volume_stats", "keep_pseudo_label", "pseudo_label", "agreed_pseudo_labels", "pseudo_labelled_datalist"]

logger = logging.getLogger(__name__)

LIVER_ML = (600.0, 4000.0)        # plausible adult liver volumes (mL); CHAOS and SABS livers lie in 1000-3000
MAX_MEAN_ENTROPY = 0.25           # nats; the mean over the mask of the ensemble's per-voxel entropy (ln 2 = 0.69 is a coin)


def _voxel_ml(image: nib.Nifti1Image) -> float:
    return float(np.prod(image.header.get_zooms()[:3])) / 1000.0


def volume_stats(mask_path: str | Path, uncertainty_path: str | Path) -> dict:
    """Liver volume (mL) and mean ensemble entropy inside the mask of one predicted volume."""
    mask_image = nib.load(str(mask_path))
    mask = np.asarray(mask_image.dataobj) > 0
    entropy = np.asarray(nib.load(str(uncertainty_path)).dataobj, dtype=np.float32)
    if entropy.shape != mask.shape:
        raise DataError(uncertainty_path, f"has shape {entropy.shape}, its mask {mask_path} has {mask.shape}")
    return {"liver_ml": round(float(mask.sum()) * _voxel_ml(mask_image), 1),
            "mean_entropy": round(float(entropy[mask].mean()) if mask.any() else float("inf"), 4)}


def keep_pseudo_label(stats: dict, liver_ml: tuple[float, float] | None = None, max_mean_entropy: float | None = None) -> bool:
    """Whether a predicted volume is trusted as a pseudo-label (see the module docstring);
    the bounds default to ``LIVER_ML`` and ``MAX_MEAN_ENTROPY``."""
    low, high = LIVER_ML if liver_ml is None else liver_ml
    max_mean_entropy = MAX_MEAN_ENTROPY if max_mean_entropy is None else max_mean_entropy
    return low <= stats["liver_ml"] <= high and stats["mean_entropy"] <= max_mean_entropy


def pseudo_label(entries: list[dict], model_path: str | Path, out: str | Path, sizes: dict, adaptation: str,
                 amp: str | None = None, **filters) -> list[dict]:
    """Pseudo-labels of the MR ``entries`` by the stage-2 model ``model_path``, in ``out``.

    Returns the kept entries (``image``, ``label``: the pseudo-label, ``subject``) and writes
    ``out/pseudo_labels.json`` with every volume's statistics and whether it was kept.
    ``filters``: ``liver_ml``, ``max_mean_entropy`` of :func:`keep_pseudo_label`. The model file
    holds its whole inference network (a DADR model's content path too): no ``drl_path`` here.
    """
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for entry in entries:  # inference reads a folder: links to the training MR, under their own names
        link = images / Path(entry["image"]).name
        if not link.exists():
            link.symlink_to(Path(entry["image"]).resolve())
    run_bundle("run", config_file=str(CONFIGS / "inference.yaml"), dataset_dir=str(images), output_dir=str(out / "masks"),
               model_path=str(model_path), adaptation=adaptation, modality="mr", uncertainty=True, amp=amp, **sizes)
    kept, report = [], []
    for entry in entries:
        case = case_name(entry["image"])
        mask = out / "masks" / f"{case}_liver.nii.gz"
        stats = volume_stats(mask, out / "masks" / f"{case}_uncertainty.nii.gz")
        keep = keep_pseudo_label(stats, **filters)
        report.append({"image": entry["image"], **stats, "kept": keep})
        if keep:
            kept.append({"image": entry["image"], "label": str(mask), "subject": entry.get("subject", case)})
    with atomic_outputs([out / "pseudo_labels.json"]) as (tmp,):
        tmp.write_text(json.dumps(report, indent=2))
    logger.info("pseudo-labels: %d of %d MR volumes kept (%s)", len(kept), len(entries), out)
    return kept


def agreed_pseudo_labels(per_teacher: list[list[dict]], out: str | Path, liver_ml: tuple[float, float] | None = None) -> list[dict]:
    """Pseudo-labels where several teachers agree, in ``out/masks``: for each MR volume that every
    teacher's filters kept (``per_teacher``: :func:`pseudo_label`'s entries), the voxels every
    teacher marks as liver (largest component), kept when that is still a plausible liver volume.
    Teachers that fail on different patients (the randomised CT UNet and DACGAN, docs/RESULTS.md)
    then pass on only what both see. Writes ``out/pseudo_labels.json``."""
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    by_image = [{e["image"]: e for e in kept} for kept in per_teacher]
    low, high = LIVER_ML if liver_ml is None else liver_ml
    kept, report = [], []
    for image in [e["image"] for e in per_teacher[0] if all(e["image"] in other for other in by_image[1:])]:
        masks = [nib.load(teacher[image]["label"]) for teacher in by_image]
        if len({m.shape for m in masks}) > 1:
            raise DataError(image, f"its teachers' masks differ in shape: {[m.shape for m in masks]}")
        livers = [np.asarray(m.dataobj) > 0 for m in masks]
        agree = np.logical_and.reduce(livers)
        if agree.any():
            agree = get_largest_connected_component_mask(torch.from_numpy(agree)).numpy()
        voxel_ml = _voxel_ml(masks[0])
        liver = round(float(agree.sum()) * voxel_ml, 1)
        keep = low <= liver <= high
        report.append({"image": image, "liver_ml": liver, "teachers_liver_ml": [round(float(m.sum()) * voxel_ml, 1) for m in livers], "kept": keep})
        if keep:
            path = out / "masks" / f"{case_name(image)}_liver.nii.gz"
            with atomic_outputs([path]) as (tmp,):
                agreed = nib.Nifti1Image(agree.astype(np.uint8), masks[0].affine, masks[0].header)
                agreed.set_data_dtype(np.uint8)
                nib.save(agreed, str(tmp))
            kept.append(by_image[0][image] | {"label": str(path)})
    with atomic_outputs([out / "pseudo_labels.json"]) as (tmp,):
        tmp.write_text(json.dumps(report, indent=2))
    logger.info("pseudo-labels where %d teachers agree: %d of %d MR volumes kept (%s)", len(per_teacher), len(kept), len(report), out)
    return kept


def pseudo_labelled_datalist(sections: dict, teachers: list[tuple[str | Path, str]], out: str | Path, sizes: dict,
                             amp: str | None = None) -> Path:
    """``out/datalist.json``: the datalist ``sections`` (absolute paths) plus their ``target`` MR
    pseudo-labelled by the stage-2 models ``teachers`` ((model path, inference adaptation) pairs;
    several: where they agree, :func:`agreed_pseudo_labels`): the training data of a self-trained model."""
    out = Path(out)
    if len(teachers) == 1:
        kept = pseudo_label(sections["target"], teachers[0][0], out / "pseudo", sizes, teachers[0][1], amp=amp)
    else:
        per_teacher = [pseudo_label(sections["target"], path, out / "pseudo" / f"teacher_{i}", sizes, adaptation, amp=amp)
                       for i, (path, adaptation) in enumerate(teachers)]
        kept = agreed_pseudo_labels(per_teacher, out / "pseudo")
    if not kept:
        raise DataError(out / "pseudo" / "pseudo_labels.json", f"no pseudo-label of {[str(t) for t, _ in teachers]} passed the filters: nothing to self-train on")
    path = out / "datalist.json"
    with atomic_outputs([path]) as (tmp,):
        tmp.write_text(json.dumps(sections | {PSEUDO_SECTION: kept}, indent=2))
    return path
