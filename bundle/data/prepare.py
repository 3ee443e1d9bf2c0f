"""Real-data preparation: any supported container -> NIfTI image + binary liver mask + datalist.

This is step 1 of the pipeline (DESIGN.md). The mask is always brought onto the image grid by
resampling in physical space (SimpleITK), never by array index, because real masks come in
other orientations and containers than their images (TotalSegmentator's DICOM example, CHAOS).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bundle.atomic import atomic_outputs, check_writable_dir
from bundle.data.intensity import MR_PERCENTILES
from bundle.data.readers import Volume, check_contrast, read_image, read_mask
from bundle.errors import DataError

__all__ = ["align_mask", "liver_stats", "prepare_case", "prepare_chaos", "make_datalist", "chaos_cases", "ORGANS", "parse_organs"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIX = "_image.nii.gz"
LIVER_SUFFIX = "_liver.nii.gz"
ORGANS_SUFFIX = "_organs.nii.gz"
LABELS_SUFFIX = "_labels.nii.gz"  # the whole multi-class mask on the image grid: the tissue classes of the synthetic source
# The organ map's classes (CHAOS's abdominal labels): training on them teaches the UNet what the
# liver is not (the right kidney and the spleen are what a liver-only model confuses it with).
ORGANS = ("liver", "right_kidney", "left_kidney", "spleen")
# CHAOS Ground PNGs: CT masks are liver-only (255); MR masks code liver as 63 (kidneys 126/189, spleen 252).
CHAOS_CT_LIVER = 255
CHAOS_MR_LIVER = 63


def _physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = np.array(image.GetSize())
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([(-0.5 if c == 0 else s - 0.5) for c, s in zip(bits, size)])
        for bits in np.ndindex(2, 2, 2)
    ]
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def _volume_ml(mask: sitk.Image) -> float:
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0


def _liver_value(labels: np.ndarray, liver_label: int | None, path: Path) -> int:
    present = [int(v) for v in labels if v != 0]
    if not present:
        raise DataError(path, "liver mask is empty (no non-zero voxels)")
    if liver_label is None:
        if len(present) > 1:
            raise DataError(path, f"has several labels {present}; say which one is the liver with --liver_label")
        return present[0]
    if liver_label not in present:
        raise DataError(path, f"has no voxels with liver label {liver_label} (labels present: {present})")
    return liver_label


def align_mask(mask: sitk.Image, image: Volume, mask_path: str | Path, liver_label: int | None = None) -> sitk.Image:
    """Binary liver mask (uint8 0/1) on ``image``'s grid, resampled in physical space.

    Args:
        mask: label map in its own geometry.
        image: the volume the mask describes.
        mask_path: where the mask came from, for error messages.
        liver_label: label id of the liver; ``None`` accepts a mask with a single non-zero label.
    """
    mask_path = Path(mask_path)
    values = sitk.GetArrayViewFromImage(mask)
    liver = _liver_value(np.unique(values), liver_label, mask_path)
    binary = sitk.GetImageFromArray((values == liver).astype(np.uint8))
    binary.CopyInformation(mask)

    low_m, high_m = _physical_bounds(binary)
    low_i, high_i = _physical_bounds(image.image)
    if np.any(np.minimum(high_m, high_i) <= np.maximum(low_m, low_i)):
        raise DataError(
            mask_path,
            f"does not overlap the image {image.path} in physical space "
            f"(mask spans {np.round(low_m, 1)}..{np.round(high_m, 1)} mm, image {np.round(low_i, 1)}..{np.round(high_i, 1)} mm)",
        )
    aligned = sitk.Resample(binary, image.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

    before, after = _volume_ml(binary), _volume_ml(aligned)
    if after == 0:
        raise DataError(mask_path, f"liver is empty once aligned to the image {image.path}: the mask lies outside it")
    if after < 0.9 * before:
        logger.warning("%s: %.0f%% of the liver lies outside the image %s", mask_path, 100 * (1 - after / before), image.path)
    return aligned


def parse_organs(text: str | dict | None) -> dict[str, int]:
    """``"right_kidney=2,left_kidney=3,spleen=4"`` (the other organs' ids in a multi-class mask) -> dict."""
    if text is None or isinstance(text, dict):
        return dict(text or {})
    organs = {}
    for part in str(text).split(","):
        name, _, value = part.partition("=")
        if name.strip() not in ORGANS[1:] or not value.strip().isdigit():
            raise DataError("--organs", f"expected NAME=ID pairs with NAME in {', '.join(ORGANS[1:])}, got {part!r}")
        organs[name.strip()] = int(value)
    return organs


def organ_map(mask: sitk.Image, image: Volume, mask_path: str | Path, liver_label: int | None, organs: dict[str, int]) -> sitk.Image:
    """The organ map (uint8: 0 background, then ``ORGANS`` in order from 1) on ``image``'s grid."""
    values = sitk.GetArrayViewFromImage(mask)
    present = set(np.unique(values).tolist())
    if missing := {name: v for name, v in organs.items() if v not in present}:
        raise DataError(mask_path, f"has no voxels for {missing} (labels present: {sorted(present)})")
    classes = np.zeros(values.shape, dtype=np.uint8)
    for index, name in enumerate(ORGANS, start=1):
        value = _liver_value(np.unique(values), liver_label, Path(mask_path)) if name == "liver" else organs.get(name)
        if value is not None:
            classes[values == value] = index
    mapped = sitk.GetImageFromArray(classes)
    mapped.CopyInformation(mask)
    return sitk.Resample(mapped, image.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _label_map(mask: sitk.Image, image: Volume, mask_path: str | Path) -> sitk.Image:
    """The mask's every label (uint8, ids as in the mask) on ``image``'s grid: what the
    contrast-agnostic source (``bundle.synthesis``) re-renders class by class."""
    values = sitk.GetArrayViewFromImage(mask)
    if values.min() < 0 or values.max() > 255:
        raise DataError(mask_path, f"has label ids outside 0..255 ({values.min()}..{values.max()}): not a label map")
    return sitk.Resample(sitk.Cast(mask, sitk.sitkUInt8), image.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def liver_stats(image: sitk.Image, liver: sitk.Image) -> dict:
    """Physical facts that tell a correct mask from a misaligned one.

    ``side`` compares the liver centroid with the body centroid (Otsu foreground) along the
    patient's left-right axis: SimpleITK's physical frame is LPS, so the patient's right is -x.
    """
    array = sitk.GetArrayViewFromImage(image).astype(np.float64)
    mask = sitk.GetArrayViewFromImage(liver) > 0
    # A copy, not a view: a view of the temporary Otsu image would dangle once it is freed.
    body = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1)) > 0

    def centroid(m: np.ndarray) -> np.ndarray:
        zyx = np.argwhere(m).mean(axis=0)
        return np.array(image.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))

    liver_c, body_c = centroid(mask), centroid(body)
    return {
        "shape": list(image.GetSize()),
        "spacing_mm": [round(s, 3) for s in image.GetSpacing()],
        "liver_ml": round(_volume_ml(liver), 1),
        "liver_mean": round(float(array[mask].mean()), 1),
        "liver_centroid_mm": [round(float(c), 1) for c in liver_c],
        "side": "right" if liver_c[0] < body_c[0] else "left",
    }


def _storage_type(image: sitk.Image) -> sitk.Image:
    """int16 for integer scans whose values fit (CT in HU, most MR), float32 otherwise."""
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind in "iu" and array.min() >= -32768 and array.max() <= 32767:
        return sitk.Cast(image, sitk.sitkInt16)
    if array.dtype.kind in "iu":
        return sitk.Cast(image, sitk.sitkInt32)
    return sitk.Cast(image, sitk.sitkFloat32)


def prepare_case(image: str | Path, mask: str | Path, out: str | Path, name: str, liver_label: int | None = None,
                 organs: str | dict | None = None, label_map: bool = False) -> dict:
    """Write ``out/NAME_image.nii.gz`` and ``out/NAME_liver.nii.gz`` (uint8 0/1) on the image's grid,
    with ``organs`` (the other organs' ids in a multi-class mask, ``"right_kidney=2,..."``) the
    organ map ``out/NAME_organs.nii.gz`` (``ORGANS``, from 1), and with ``label_map`` the whole mask,
    every id kept, as ``out/NAME_labels.nii.gz`` (the synthetic source's tissue classes).

    All files appear together or not at all. Returns the ``liver_stats`` of the result.
    """
    organs = parse_organs(organs)
    if not name or os.sep in name or name.startswith("."):
        raise DataError(name or "<empty name>", "is not a usable case name")
    out_dir = Path(out)
    inputs = {Path(p).resolve() for p in (image, mask)}
    suffixes = [IMAGE_SUFFIX, LIVER_SUFFIX] + ([ORGANS_SUFFIX] if organs else []) + ([LABELS_SUFFIX] if label_map else [])
    for target in (out_dir / f"{name}{suffix}" for suffix in suffixes):
        if target.resolve() in inputs:
            raise DataError(target, "is an input of this command and would be overwritten; choose another --out or --name")
    volume = read_image(image)
    check_contrast(sitk.GetArrayViewFromImage(volume.image), volume.path, MR_PERCENTILES)  # any scan has that much range
    labels = read_mask(mask, volume)
    liver = align_mask(labels, volume, mask, liver_label)
    maps = ([organ_map(labels, volume, mask, liver_label, organs)] if organs else []) + ([_label_map(labels, volume, mask)] if label_map else [])
    out = check_writable_dir(out)
    targets = [out / f"{name}{suffix}" for suffix in suffixes]
    try:
        with atomic_outputs(targets) as temps:
            sitk.WriteImage(_storage_type(volume.image), str(temps[0]), useCompression=True)
            for data, tmp in zip([liver, *maps], temps[1:]):
                sitk.WriteImage(data, str(tmp), useCompression=True)
    except (OSError, RuntimeError) as e:
        raise DataError(out, f"cannot write the prepared case {name}: {e}") from e
    stats = liver_stats(volume.image, liver)
    logger.info("%s: %s", name, stats)
    return {"name": name, **stats}


def chaos_cases(root: str | Path) -> list[tuple[str, Path, Path, int]]:
    """(name, image, mask, liver label) for every case of a CHAOS training-set folder."""
    root = Path(root)
    cases = []
    for case in sorted((root / "CT").glob("*/"), key=lambda p: p.name):
        cases.append((f"ct_{case.name}", case / "DICOM_anon", case / "Ground", CHAOS_CT_LIVER))
    for case in sorted((root / "MR").glob("*/"), key=lambda p: p.name):
        t2 = case / "T2SPIR"
        if t2.is_dir():
            cases.append((f"mr_t2_{case.name}", t2 / "DICOM_anon", t2 / "Ground", CHAOS_MR_LIVER))
        t1 = case / "T1DUAL"
        for phase, tag in (("InPhase", "t1in"), ("OutPhase", "t1out")):
            if (t1 / "DICOM_anon" / phase).is_dir():
                cases.append((f"mr_{tag}_{case.name}", t1 / "DICOM_anon" / phase, t1 / "Ground", CHAOS_MR_LIVER))
    return cases


def prepare_chaos(root: str | Path, out: str | Path) -> list[dict]:
    """Prepare every case of a CHAOS training-set layout (``CT/<id>``, ``MR/<id>/T1DUAL|T2SPIR``).

    A bad case does not stop the others; the call fails at the end naming every bad case.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "does not exist or is not a folder")
    cases = chaos_cases(root)
    if not cases:
        raise DataError(root, "is not a CHAOS training-set folder: no CT/<id>/DICOM_anon or MR/<id>/T2SPIR|T1DUAL found")
    results, failures = [], []
    for name, image, mask, label in cases:
        try:
            results.append(prepare_case(image, mask, out, name, label))
        except DataError as e:
            logger.error("%s", e)
            failures.append(str(e))
    if failures:
        raise DataError(root, f"{len(failures)} of {len(cases)} cases failed:\n  " + "\n  ".join(failures))
    return results


def _cases(folder: Path, labelled: bool, out_dir: Path) -> list[dict]:
    if not folder.is_dir():
        raise DataError(folder, "does not exist or is not a folder")
    images = sorted(folder.glob(f"*{IMAGE_SUFFIX}"), key=lambda p: p.name)
    if not images:
        raise DataError(folder, f"holds no *{IMAGE_SUFFIX} files (make them with `prepare_data.py case`)")
    entries = []
    for image in images:
        subject = image.name[: -len(IMAGE_SUFFIX)]
        entry = {"image": os.path.relpath(image, out_dir)}
        if labelled:
            liver = folder / f"{subject}{LIVER_SUFFIX}"
            if not liver.exists():
                raise DataError(liver, f"is missing: the labelled image {image.name} needs its liver mask")
            entry["label"] = os.path.relpath(liver, out_dir)
            if (organs := folder / f"{subject}{ORGANS_SUFFIX}").exists():
                entry["organs"] = os.path.relpath(organs, out_dir)
            if (labels := folder / f"{subject}{LABELS_SUFFIX}").exists():
                entry["labels"] = os.path.relpath(labels, out_dir)
        entry["subject"] = subject
        entries.append(entry)
    return entries


def _folders(folders: str | Path | list | tuple) -> list[Path]:
    """One folder, or several as a list or a comma-separated string (fire passes ``a,b`` as a tuple)."""
    if isinstance(folders, (list, tuple)):
        return [Path(f).resolve() for f in folders]
    return [Path(f).resolve() for f in str(folders).split(",") if f]


def make_datalist(source: str | Path | list, target: str | Path, out: str | Path, target_test: str | Path | None = None) -> dict:
    """Write the datalist JSON of the pipeline, paths relative to the file itself.

    ``source``: labelled CT, one folder or several (comma-separated); ``target``: unlabelled MR
    for adaptation; ``target_test``: labelled MR for evaluation only.
    """
    out = Path(out)
    out_dir = check_writable_dir(out.parent if str(out.parent) else ".").resolve()
    datalist = {
        "source": [entry for folder in _folders(source) for entry in _cases(folder, True, out_dir)],
        "target": _cases(Path(target).resolve(), False, out_dir),
    }
    if target_test is not None:
        datalist["target_test"] = _cases(Path(target_test).resolve(), True, out_dir)
    with atomic_outputs([out]) as (tmp,):
        tmp.write_text(json.dumps(datalist, indent=2) + "\n")
    return datalist
