"""Real-data preparation on phantoms exported to the containers real scans come in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_script

from bundle.data.export import write_chaos_case, write_dicom_series
from bundle.data.prepare import make_datalist, prepare_case, prepare_chaos
from bundle.errors import DataError


def array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_mask_in_another_orientation_is_aligned_in_physical_space(phantoms, tmp_path):
    """A mask stored right-inferior-superior-flipped (like TotalSegmentator's DICOM example) lands on the same voxels."""
    labels = sitk.ReadImage(str(phantoms / "ct/ct_000_labels.nii.gz"))
    reoriented = sitk.DICOMOrient(labels, "LAI")  # same physical space, other axis directions
    assert not np.array_equal(sitk.GetArrayFromImage(reoriented), sitk.GetArrayFromImage(labels))
    sitk.WriteImage(reoriented, str(tmp_path / "mask.nii.gz"))
    summary = prepare_case(phantoms / "ct/ct_000_image.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "out", "case", liver_label=1)
    np.testing.assert_array_equal(array(tmp_path / "out/case_liver.nii.gz"), array(phantoms / "ct/ct_000_liver.nii.gz"))
    assert summary["side"] == "right" and 40 < summary["liver_mean"] < 150
    liver = sitk.ReadImage(str(tmp_path / "out/case_liver.nii.gz"))
    assert liver.GetPixelID() == sitk.sitkUInt8
    image = sitk.ReadImage(str(phantoms / "ct/ct_000_image.nii.gz"))
    assert liver.GetSize() == image.GetSize() and np.allclose(liver.GetOrigin(), image.GetOrigin())


def test_mask_on_a_coarser_grid_is_resampled_onto_the_image(phantoms, tmp_path):
    liver = sitk.ReadImage(str(phantoms / "mr/mr_000_liver.nii.gz"))
    coarse = sitk.Resample(liver, [s // 2 for s in liver.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           liver.GetOrigin(), [2 * s for s in liver.GetSpacing()], liver.GetDirection())
    sitk.WriteImage(coarse, str(tmp_path / "coarse.nrrd"))
    prepare_case(phantoms / "mr/mr_000_t2_image.nii.gz", tmp_path / "coarse.nrrd", tmp_path, "mr")
    got, want = array(tmp_path / "mr_liver.nii.gz") > 0, array(phantoms / "mr/mr_000_liver.nii.gz") > 0
    assert 2 * (got & want).sum() / (got.sum() + want.sum()) > 0.85


def test_chaos_layout_dicom_and_png_round_trip(phantoms, tmp_path):
    """CHAOS numbers PNGs by DICOM instance, the reverse of slice position: the order must be matched."""
    write_chaos_case(phantoms / "ct/ct_001_image.nii.gz", phantoms / "ct/ct_001_liver.nii.gz", tmp_path / "root/CT/4", "CT")
    write_chaos_case(phantoms / "mr/mr_001_t2_image.nii.gz", phantoms / "mr/mr_001_liver.nii.gz", tmp_path / "root/MR/9/T2SPIR", "MR")
    summaries = prepare_chaos(tmp_path / "root", tmp_path / "out")
    assert [s["name"] for s in summaries] == ["ct_4", "mr_t2_9"]
    np.testing.assert_array_equal(array(tmp_path / "out/ct_4_liver.nii.gz"), array(phantoms / "ct/ct_001_liver.nii.gz"))
    np.testing.assert_array_equal(array(tmp_path / "out/mr_t2_9_liver.nii.gz"), array(phantoms / "mr/mr_001_liver.nii.gz"))
    hu = array(tmp_path / "out/ct_4_image.nii.gz").astype(float)
    assert np.abs(hu - array(phantoms / "ct/ct_001_image.nii.gz")).max() <= 1.0  # int16 DICOM storage


def test_dicom_image_with_nrrd_mask_and_dicom_mask(phantoms, tmp_path):
    image = sitk.ReadImage(str(phantoms / "ct/ct_000_image.nii.gz"))
    write_dicom_series(image, tmp_path / "dicom")
    write_dicom_series(sitk.ReadImage(str(phantoms / "ct/ct_000_liver.nii.gz")), tmp_path / "mask_dicom")
    sitk.WriteImage(sitk.ReadImage(str(phantoms / "ct/ct_000_liver.nii.gz")), str(tmp_path / "liver.nrrd"))
    want = array(phantoms / "ct/ct_000_liver.nii.gz")
    for name, mask in (("nrrd", tmp_path / "liver.nrrd"), ("dcm", tmp_path / "mask_dicom")):
        prepare_case(tmp_path / "dicom", mask, tmp_path / "out", name)
        np.testing.assert_array_equal(array(tmp_path / f"out/{name}_liver.nii.gz"), want)


def test_multi_class_mask_needs_a_declared_liver_label(phantoms, tmp_path):
    image, labels = phantoms / "ct/ct_000_image.nii.gz", phantoms / "ct/ct_000_labels.nii.gz"
    with pytest.raises(DataError, match="several labels"):
        prepare_case(image, labels, tmp_path, "x")
    prepare_case(image, labels, tmp_path, "spleen", liver_label=2)  # any declared id becomes the mask
    np.testing.assert_array_equal(array(tmp_path / "spleen_liver.nii.gz"), array(labels) == 2)


def test_datalist_has_relative_paths_and_the_three_splits(phantoms, tmp_path):
    for subject in ("ct_000", "ct_001"):
        prepare_case(phantoms / f"ct/{subject}_image.nii.gz", phantoms / f"ct/{subject}_liver.nii.gz", tmp_path / "ct", subject)
    prepare_case(phantoms / "mr/mr_000_t2_image.nii.gz", phantoms / "mr/mr_000_liver.nii.gz", tmp_path / "mr", "mr_000")
    result = run_script("prepare_data.py", "datalist", "--source", tmp_path / "ct", "--target", tmp_path / "mr",
                        "--target_test", tmp_path / "mr", "--out", tmp_path / "lists/datalist.json")
    assert result.returncode == 0, result.stderr
    datalist = json.loads((tmp_path / "lists/datalist.json").read_text())
    assert datalist["source"][1] == {"image": "../ct/ct_001_image.nii.gz", "label": "../ct/ct_001_liver.nii.gz", "subject": "ct_001"}
    assert datalist["target"] == [{"image": "../mr/mr_000_image.nii.gz", "subject": "mr_000"}]
    assert datalist["target_test"][0]["label"] == "../mr/mr_000_liver.nii.gz"
    (tmp_path / "ct/ct_001_liver.nii.gz").unlink()
    with pytest.raises(DataError, match="ct_001_liver.nii.gz: is missing"):
        make_datalist(tmp_path / "ct", tmp_path / "mr", tmp_path / "again.json")
    assert not (tmp_path / "again.json").exists()


def test_case_cli_prints_a_summary(phantoms, tmp_path):
    result = run_script("prepare_data.py", "case", "--image", phantoms / "mr/mr_002_t1_pre_image.nii.gz",
                        "--mask", phantoms / "mr/mr_002_labels.nii.gz", "--liver_label", 1, "--out", tmp_path, "--name", "p")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["name"] == "p" and summary["side"] == "right" and summary["liver_ml"] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p_image.nii.gz", "p_liver.nii.gz"]
