"""A corpus of broken scans, each with the words its error must contain (tests/test_bad_input.py)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from bundle.data.export import write_dicom_series


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def make_corpus(reference: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """``{kind: (path, problem)}``: one bad scan of each kind in ``folder``, made from the good
    NIfTI ``reference``. Every kind is a way real exports go wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(reference), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    raw = gzip.decompress(reference.read_bytes())
    corpus: dict[str, tuple[Path, str]] = {}

    def add(kind: str, path: Path, problem: str) -> None:
        corpus[kind] = (path, problem)

    def write(kind: str, data: sitk.Image, problem: str, suffix: str = ".nii.gz") -> None:
        path = folder / f"{kind}{suffix}"
        sitk.WriteImage(data, str(path))
        add(kind, path, problem)

    (folder / "truncated.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))
    add("truncated", folder / "truncated.nii.gz", "cannot be read")
    (folder / "garbage.nii.gz").write_bytes(np.random.default_rng(0).bytes(5000))
    add("garbage", folder / "garbage.nii.gz", "cannot be read")
    (folder / "zero_bytes.nii.gz").write_bytes(b"")
    add("zero_bytes", folder / "zero_bytes.nii.gz", "cannot be read")
    (folder / "text.nii").write_text("patient notes, not an image\n")
    add("text", folder / "text.nii", "cannot be read")
    (folder / "header_only.nii").write_bytes(gzip.decompress(reference.read_bytes())[:352])
    add("header_only", folder / "header_only.nii", "cannot be read")
    nrrd = folder / "truncated_nrrd.nrrd"
    sitk.WriteImage(image, str(nrrd))
    nrrd.write_bytes(nrrd.read_bytes()[:-2000])
    add("truncated_nrrd", nrrd, "cannot be read")
    (folder / "garbage_meta.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n" + np.random.default_rng(1).bytes(300))
    add("garbage_mha", folder / "garbage_meta.mha", "cannot be read")
    write("slice_2d", image[:, :, 5], "is 2D")
    write("one_slice", image[:, :, 5:6], "is 2D")
    write("four_d", sitk.JoinSeries([image, image]), "is 4D")
    write("rgb", sitk.Compose([image, image, image]), "components per voxel")
    nan = array.copy()
    nan[3, 10, 10] = np.nan
    write("nan", _like(nan, image), "NaN or infinite")
    inf = array.copy()
    inf[2, 5, 5] = np.inf
    write("inf", _like(inf, image), "NaN or infinite")
    write("all_zero", _like(np.zeros_like(array), image), "in every voxel")
    write("constant", _like(np.full_like(array, 300.0), image), "in every voxel")
    speck = np.zeros_like(array)
    speck[0, :2, :2] = 500.0
    write("speck", _like(speck, image), "has no contrast")
    sheared = folder / "sheared.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.T), np.array([[1.0, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]])), sheared)
    add("sheared", sheared, "non-orthonormal orientation")
    for kind, damage in (("dicom_missing_slice", "missing"), ("dicom_unreadable_slice", "unreadable")):
        series = folder / kind
        files = sorted(write_dicom_series(sitk.Cast(image, sitk.sitkInt16), series, modality="MR"))
        victim = files[len(files) // 2]
        victim.unlink() if damage == "missing" else victim.write_bytes(b"\0" * 200)
        add(kind, series, "not evenly spaced")
    (folder / "not_dicom").mkdir()
    (folder / "not_dicom" / "readme.txt").write_text("no scans here")
    add("not_dicom", folder / "not_dicom", "no DICOM series")
    dangling = folder / "dangling.nii.gz"
    dangling.symlink_to(folder / "nowhere.nii.gz")
    add("dangling_link", dangling, "does not exist")
    shutil.copy(reference, folder / "unrelated_mask_liver.nii.gz")  # a mask in the folder is not a case
    return corpus
