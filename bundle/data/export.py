"""Write volumes in the containers real data arrives in: DICOM series and CHAOS PNG masks.

This lets the preparation path run end to end on phantoms (demo, tests) exactly as it runs on
real scans, including CHAOS's convention that the PNG order follows the DICOM instance numbers
and not the slice positions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["write_dicom_series", "write_png_stack", "write_chaos_case"]


def write_dicom_series(image: sitk.Image, folder: str | Path, modality: str = "CT") -> list[Path]:
    """One DICOM file per axial slice, named ``iNNNN,0000b.dcm`` as in CHAOS.

    Instance 1 is the most superior slice (CHAOS order), so file order is the reverse of the
    slice-position order that series readers sort by. Returns the files, in instance order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.Cast(image, sitk.sitkInt16)
    uid = f"1.2.826.0.1.3680043.2.1125.{int(time.time() * 1e3)}"
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
    depth = image.GetSize()[2]
    files = []
    for instance, z in enumerate(range(depth - 1, -1, -1), start=1):
        plane = volume[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{uid}.3.{instance}",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.2",
            "0020|0013": str(instance),
            "0020|0032": "\\".join(f"{p:.4f}" for p in position),
            "0020|0037": orientation,
            "0018|0050": f"{image.GetSpacing()[2]:.4f}",
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        path = folder / f"i{instance - 1:04d},0000b.dcm"
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(path))
        writer.Execute(plane)
        files.append(path)
    return files


def write_png_stack(mask: sitk.Image, folder: str | Path, value: int) -> list[Path]:
    """``liver_GT_NNN.png`` per slice (liver = ``value``), NNN following the DICOM instance order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(mask)
    files = []
    for k, z in enumerate(range(array.shape[0] - 1, -1, -1)):
        path = folder / f"liver_GT_{k:03d}.png"
        sitk.WriteImage(sitk.GetImageFromArray(((array[z] > 0) * value).astype(np.uint8)), str(path))
        files.append(path)
    return files


def write_chaos_case(image: str | Path, liver: str | Path, case_dir: str | Path, modality: str = "CT") -> Path:
    """A CHAOS-layout case (``DICOM_anon/`` + ``Ground/``) from a NIfTI image and liver mask."""
    case_dir = Path(case_dir)
    write_dicom_series(sitk.ReadImage(str(image)), case_dir / "DICOM_anon", modality)
    write_png_stack(sitk.ReadImage(str(liver)), case_dir / "Ground", 255 if modality == "CT" else 63)
    return case_dir
