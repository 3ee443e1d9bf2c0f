"""Readers for scans and liver masks in the containers real data comes in.

Images: NIfTI, NRRD, MetaImage files, or a folder holding one DICOM series.
Masks: the same file formats, a DICOM series, or a folder of 2D PNG slices (CHAOS ``Ground/``).
Every reader validates what it returns (3D, finite, one channel) and raises ``DataError``
naming the file, so a bad case fails early with a message a user can act on.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from monai.data import ImageReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImaged

from bundle.errors import DataError

__all__ = ["Volume", "read_image", "read_mask", "natural_key", "IMAGE_SUFFIXES", "SimpleITKReader", "LoadVolumed", "case_name", "check_contrast"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MAX_LABEL_VALUES = 16  # a volume with this many whole values or fewer is a label map, not a scan


@dataclass
class Volume:
    """A 3D image read from ``path``; ``slice_files`` lists a DICOM series' files in ITK slice order."""

    image: sitk.Image
    path: Path
    slice_files: list[Path] | None = None


def natural_key(name: str | Path) -> list:
    """Sort key that orders ``slice_2`` before ``slice_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def _first_line(error: Exception) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    # ITK messages start with a source location; the last line says what went wrong.
    return lines[-1] if lines else type(error).__name__


def _check_slice_positions(folder: Path, files: list[str]) -> None:
    """The series' slices must be evenly spaced: ITK stacks whatever files it finds and spreads
    them evenly, so a missing or unreadable slice file would silently stretch the volume
    (20 files at 2 mm read as 19 slices at 2.11 mm)."""
    if len(files) < 3:
        return
    positions = []
    for f in files:
        header = sitk.ImageFileReader()
        header.SetFileName(f)
        try:
            header.ReadImageInformation()
            origin = np.array([float(v) for v in header.GetMetaData("0020|0032").split("\\")])
            row, col = np.array([float(v) for v in header.GetMetaData("0020|0037").split("\\")]).reshape(2, 3)
        except (RuntimeError, ValueError):
            return  # no patient position/orientation tags: nothing to check against
        positions.append(float(origin @ np.cross(row, col)))
    steps = np.diff(np.sort(positions))
    typical = float(np.median(steps))
    if typical <= 0:
        raise DataError(folder, f"DICOM series has several files at the same slice position ({len(files)} files)")
    uneven = np.flatnonzero(np.abs(steps - typical) > 0.01 * typical + 1e-3)
    if uneven.size:
        k = int(uneven[0])
        raise DataError(folder, f"DICOM slices are not evenly spaced: {steps[k]:.3g} mm between slices {k} and {k + 1} of {len(files)}, "
                                f"{typical:.3g} mm elsewhere (a slice file missing or unreadable?)")


def _read_dicom_series(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise DataError(folder, "no DICOM series found in this folder")
    files_per_series = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    sid = max(files_per_series, key=lambda s: len(files_per_series[s]))
    if len(series) > 1:
        logger.warning("%s holds %d DICOM series; using %s (%d files)", folder, len(series), sid, len(files_per_series[sid]))
    files = list(files_per_series[sid])
    _check_slice_positions(folder, files)
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise DataError(folder, f"DICOM series cannot be read: {_first_line(e)}") from e
    return Volume(image, folder, [Path(f) for f in files])


def _check_nifti_payload(path: Path) -> None:
    """ITK's NIfTI reader zero-fills a truncated file and turns NaN into 0; nibabel reports both."""
    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as e:  # nibabel raises EOFError, zlib, ValueError... for damaged files
        raise DataError(path, f"cannot be read (corrupt or truncated?): {' '.join(str(e).split())}") from e
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(path, f"has {bad} NaN or infinite voxels")


def _read_file(path: Path) -> sitk.Image:
    name = path.name.lower()
    if not any(name.endswith(s) for s in IMAGE_SUFFIXES + (".dcm",)):
        raise DataError(path, f"unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        if "orthonormal" in str(e).lower():  # a readable file whose affine ITK cannot represent
            raise DataError(path, f"has a sheared or non-orthonormal orientation (direction cosines), which is not supported: {_first_line(e)}") from e
        raise DataError(path, f"cannot be read (corrupt or truncated?): {_first_line(e)}") from e
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti_payload(path)
    return image


def _check_volume(image: sitk.Image, path: Path) -> None:
    """A usable volume is 3D with more than one slice, one channel, and finite values."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; one channel is expected")
    size = image.GetSize()
    if image.GetDimension() != 3:
        raise DataError(path, f"is {image.GetDimension()}D (size {size}); a 3D volume is expected")
    if min(size) < 2:
        raise DataError(path, f"is 2D (size {size}); a 3D volume with several slices is expected")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DataError(path, f"has {bad} NaN or infinite voxels")


def check_contrast(array: np.ndarray, path: str | Path, percentiles: tuple[float, float] | None = None) -> None:
    """A scan to segment must show something: not one value in every voxel (a blank or zero-filled
    export) and, for MR normalised by ``percentiles``, not one value over that range (it would map
    every voxel to the same grey and the network would answer noise), and not a label map (a few
    whole values: a mask given where a scan was expected would get a made-up liver)."""
    low, high = float(np.min(array)), float(np.max(array))
    if low == high:
        raise DataError(path, f"has the value {low:g} in every voxel: a blank image, nothing to segment")
    if percentiles is not None:
        p_low, p_high = np.percentile(array, percentiles)
        if p_low == p_high:
            raise DataError(path, f"has no contrast: its {percentiles[0]:g}-{percentiles[1]:g} percentiles are both {p_low:g} "
                                  "(nearly every voxel has one value), so MR normalisation has no range")
    voxels = np.asarray(array).ravel()
    sample = np.unique(voxels[:: max(1, voxels.size // 200_000)])  # a scan has hundreds of values
    if len(sample) <= MAX_LABEL_VALUES and np.array_equal(sample, np.round(sample)):
        raise DataError(path, f"holds only the values {', '.join(f'{v:g}' for v in sample)}: a label map (a mask), not a scan to segment")


def read_image(path: str | Path) -> Volume:
    """Read a 3D scan from a file or a DICOM series folder, raising ``DataError`` on bad input."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "does not exist")
    volume = _read_dicom_series(path) if path.is_dir() else Volume(_read_file(path), path)
    _check_volume(volume.image, path)
    return volume


def _png_slices(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png"), key=natural_key)


def _dicom_instance_order(files: list[Path]) -> list[int]:
    """Indices into ``files`` ordered by DICOM InstanceNumber (file name breaks ties)."""

    def instance(f: Path) -> tuple:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        reader.ReadImageInformation()
        key = "0020|0013"
        number = int(reader.GetMetaData(key).strip() or 0) if reader.HasMetaDataKey(key) else 0
        return (number, natural_key(f.name))

    keys = [instance(f) for f in files]
    return sorted(range(len(files)), key=keys.__getitem__)


def _read_png_stack(folder: Path, reference: Volume) -> sitk.Image:
    """Stack 2D PNG masks onto the reference grid.

    PNGs carry no geometry. The convention of CHAOS (and of most exported PNG masks) is that
    the k-th PNG belongs to the k-th DICOM file in acquisition (InstanceNumber) order, so each
    PNG is placed at that file's slice; for a non-DICOM reference the k-th PNG is slice k.
    """
    pngs = _png_slices(folder)
    depth = reference.image.GetSize()[2]
    if len(pngs) != depth:
        raise DataError(folder, f"has {len(pngs)} PNG slices but the image {reference.path} has {depth} slices")
    if reference.slice_files is not None:
        slice_of_png = _dicom_instance_order(reference.slice_files)
    else:
        slice_of_png = list(range(depth))
    rows, cols = reference.image.GetSize()[1], reference.image.GetSize()[0]
    stack = np.zeros((depth, rows, cols), dtype=np.uint8)
    for png, z in zip(pngs, slice_of_png):
        try:
            plane = sitk.GetArrayFromImage(sitk.ReadImage(str(png)))
        except RuntimeError as e:
            raise DataError(png, f"cannot be read as PNG: {_first_line(e)}") from e
        if plane.ndim == 3:  # RGB(A) export of a grey mask: any channel holds the labels
            plane = plane[..., 0]
        if plane.shape != (rows, cols):
            raise DataError(png, f"is {plane.shape[1]}x{plane.shape[0]} pixels but the image slices are {cols}x{rows}")
        stack[z] = plane
    mask = sitk.GetImageFromArray(stack)
    mask.CopyInformation(reference.image)
    return mask


def read_mask(path: str | Path, reference: Volume) -> sitk.Image:
    """Read a label map (file, DICOM series, or PNG slice folder) in its own geometry.

    ``reference`` is the image the mask belongs to; it gives PNG stacks their geometry.
    The result still has to be aligned to the image (``bundle.data.prepare.align_mask``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "does not exist")
    if path.is_dir() and _png_slices(path):
        mask = _read_png_stack(path, reference)
    else:
        mask = read_image(path).image
    values = sitk.GetArrayViewFromImage(mask)
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise DataError(path, "holds non-integer values; a label map is expected")
    return mask


def case_name(path: str | Path) -> str:
    """A case's name: the file name without its image suffix, or the DICOM folder's name."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class SimpleITKReader(ImageReader):
    """MONAI ``LoadImage`` reader built on :func:`read_image`: every container, every check.

    MONAI reads DICOM folders and NRRD with ITK (``itk``), a large extra dependency; this
    reader uses SimpleITK, already needed for data preparation, and gives MONAI's loaders the
    same validation and error messages as the preparation scripts. Arrays are (x, y, z) with
    a RAS affine, like MONAI's own readers.
    """

    def verify_suffix(self, filename) -> bool:
        return all(Path(f).is_dir() or str(f).endswith(IMAGE_SUFFIXES) for f in ([filename] if isinstance(filename, (str, Path)) else filename))

    def read(self, data, **kwargs) -> Volume:
        paths = [data] if isinstance(data, (str, Path)) else list(data)
        if len(paths) != 1:
            raise ValueError(f"SimpleITKReader reads one volume at a time, got {len(paths)} paths")
        return read_image(paths[0])

    def get_data(self, img: Volume) -> tuple[np.ndarray, dict]:
        image = img.image
        array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        lps = np.eye(4)
        lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
        lps[:3, 3] = image.GetOrigin()
        affine = orientation_ras_lps(lps)
        meta = {"affine": affine, "original_affine": affine.copy(), "spatial_shape": np.array(array.shape),
                "original_channel_dim": float("nan"), "space": "RAS"}
        return array, meta


class LoadVolumed(LoadImaged):
    """MONAI's ``LoadImaged`` reading with :class:`SimpleITKReader` only.

    Given a reader, ``LoadImage`` still falls back to its other readers when that one raises,
    so a volume ours rejects (NaN voxels, 2D, several channels) would be read by nibabel
    anyway and train on garbage. A reader passed at call time is used alone: every training
    and inference path then loads with our checks, and a bad file fails naming itself.
    """

    def __init__(self, keys, allow_missing_keys: bool = False) -> None:
        self.volume_reader = SimpleITKReader()
        super().__init__(keys, reader=self.volume_reader, image_only=True, allow_missing_keys=allow_missing_keys)

    def __call__(self, data, reader: ImageReader | None = None):
        return super().__call__(data, reader or self.volume_reader)
