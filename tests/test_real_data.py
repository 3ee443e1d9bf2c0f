"""Every real case in ../shared/data/real prepared with the documented commands, checked physically.

Skipped when the folder is absent (the scans are never part of this repository).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REAL, ROOT, requires_real_data

from bundle.data.prepare import liver_stats, prepare_chaos
from bundle.data.readers import read_image

pytestmark = [requires_real_data, pytest.mark.xdist_group("real_data")]  # one worker prepares the scans once (make test: --dist loadgroup)

CT_CASES = ["chaos_ct_1", "totalseg_ct", "totalseg_ct_dicom", "dcmqi_ct3"]
SABS_IDS = (0, 27)  # two of the 30 (3 mm and 5 mm slices, 1.17-1.71 mm pixels); `make real-data` prepares all
SABS_CASES = [f"sabs_ct_{i}" for i in SABS_IDS]
MR_IDS = (13, 36)  # two of the 10 CHAOS T2 patients (36: the hardest); `make real-data` prepares all
MR_CASES = [f"chaos_mr_t2_{i}" for i in MR_IDS]
WHOLE_LIVER = {"chaos_ct_1", "totalseg_ct", *SABS_CASES, *MR_CASES}  # scans that cover the whole liver


@pytest.fixture(scope="session")  # once per worker: make test puts every real-data test on one (xdist_group)
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    result = subprocess.run(["bash", "scripts/prepare_real.sh", str(REAL), str(out)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable, "SABS_IDS": " ".join(map(str, SABS_IDS)),
                                                       "MR_IDS": " ".join(map(str, MR_IDS))})
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def case(prepared, folder, name):
    image = sitk.ReadImage(str(prepared / folder / f"{name}_image.nii.gz"))
    liver = sitk.ReadImage(str(prepared / folder / f"{name}_liver.nii.gz"))
    return image, liver


def soft_tissue_fraction(image, liver) -> float:
    hu = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(liver) > 0]
    return float(((hu > -50) & (hu < 250)).mean())


@pytest.mark.parametrize("name", CT_CASES + ["totalseg_ct_sm"])
def test_ct_liver_is_soft_tissue_on_the_patients_right(prepared, name):
    image, liver = case(prepared, "extra" if name == "totalseg_ct_sm" else "ct", name)
    stats = liver_stats(image, liver)
    assert 0 < stats["liver_mean"] < 200, stats
    assert soft_tissue_fraction(image, liver) > 0.9
    assert stats["side"] == "right"
    low, high = (800, 3000) if name in WHOLE_LIVER else (20, 3000)
    assert low < stats["liver_ml"] < high, stats
    assert sitk.GetArrayViewFromImage(liver).max() == 1 and liver.GetPixelID() == sitk.sitkUInt8
    assert liver.GetSize() == image.GetSize() and np.allclose(liver.GetDirection(), image.GetDirection())


@pytest.mark.parametrize("name", SABS_CASES)
def test_sabs_ct_liver_is_soft_tissue_on_the_patients_right(prepared, name):
    """SABS comes as LAS arrays clipped to [-125, 275] HU; prepared, its liver is enhanced soft
    tissue on the patient's right with a whole liver's volume, and the CT window sees it whole."""
    image, liver = case(prepared, "sabs_ct", name)
    stats = liver_stats(image, liver)
    assert stats["side"] == "right" and 30 < stats["liver_mean"] < 200 and 800 < stats["liver_ml"] < 3000, stats
    assert soft_tissue_fraction(image, liver) > 0.9
    hu = sitk.GetArrayViewFromImage(image)
    assert hu.min() == -125 and hu.max() == 275  # the published clipping: the default CT window maps it to [-1, 1]
    nifti = nib.load(prepared / "sabs_ct" / f"{name}_liver.nii.gz")  # RAS world: the patient's right is +x
    liver_x = nib.affines.apply_affine(nifti.affine, np.argwhere(nifti.get_fdata() > 0))[:, 0].mean()
    assert liver_x > nib.affines.apply_affine(nifti.affine, (np.array(nifti.shape) - 1) / 2)[0]


@pytest.mark.parametrize("name", MR_CASES + ["totalseg_mr_sm"])
def test_mr_liver_is_on_the_patients_right_with_plausible_volume(prepared, name):
    image, liver = case(prepared, "extra" if name == "totalseg_mr_sm" else "mr_t2", name)
    stats = liver_stats(image, liver)
    assert stats["side"] == "right"
    assert (800 < stats["liver_ml"] < 3000) if name in WHOLE_LIVER else stats["liver_ml"] > 100, stats
    # NIfTI world is RAS: the same side seen through nibabel's affine.
    nifti = nib.load(prepared / ("extra" if "totalseg" in name else "mr_t2") / f"{name}_liver.nii.gz")
    liver_x = nib.affines.apply_affine(nifti.affine, np.argwhere(nifti.get_fdata() > 0))[:, 0].mean()
    assert liver_x > nib.affines.apply_affine(nifti.affine, np.array(nifti.shape) / 2)[0]


def test_differently_oriented_mask_would_be_wrong_if_aligned_by_index(prepared):
    """TotalSegmentator's DICOM CT and its NIfTI mask run in opposite y directions."""
    dicom = read_image(REAL / "totalseg/example_ct_dicom").image
    by_index = sitk.GetImageFromArray((sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "totalseg/example_seg_dicom.nii.gz"))) == 5).astype(np.uint8))
    by_index.CopyInformation(dicom)
    assert soft_tissue_fraction(dicom, by_index) < 0.8
    image, liver = case(prepared, "ct", "totalseg_ct_dicom")
    assert soft_tissue_fraction(image, liver) > 0.99


def test_chaos_command_on_the_original_layout_matches_the_case_command(prepared, tmp_path):
    (tmp_path / "root/CT").mkdir(parents=True)
    (tmp_path / "root/CT/1").symlink_to(REAL / "chaos_ct/1")
    [summary] = prepare_chaos(tmp_path / "root", tmp_path / "out")
    assert summary["name"] == "ct_1" and 100 < summary["liver_mean"] < 200  # portal-venous CHAOS CT
    _, expected = case(prepared, "ct", "chaos_ct_1")
    got = sitk.ReadImage(str(tmp_path / "out/ct_1_liver.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(expected))


def test_datalists_list_ct_source_and_mr_target(prepared):
    """datalist.json: every labelled CT; datalist_sabs.json: SABS only (the literature's CT source)."""
    datalist = json.loads((prepared / "datalist.json").read_text())
    assert sorted(e["subject"] for e in datalist["source"]) == sorted(SABS_CASES + CT_CASES)
    assert sorted(e["subject"] for e in datalist["target"]) == sorted(MR_CASES)
    assert all((prepared / e["label"]).is_file() for e in datalist["target_test"])
    sabs = json.loads((prepared / "datalist_sabs.json").read_text())
    assert sorted(e["subject"] for e in sabs["source"]) == sorted(SABS_CASES)
    assert sabs["target"] == datalist["target"] and sabs["target_test"] == datalist["target_test"]


def test_shipped_model_segments_a_chaos_t2_volume(prepared, tmp_path):
    """`monai.bundle run inference` with models/model.pt on a CHAOS T2 volume, as a user runs it:
    a mask on the input's grid, on the patient's right, matching the manual liver mask
    (patient 13 scores Dice 0.846 in docs/README.md)."""
    (tmp_path / "in").mkdir()
    shutil.copy(prepared / "mr_t2" / "chaos_mr_t2_13_image.nii.gz", tmp_path / "in")
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
                             "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    image, truth = case(prepared, "mr_t2", "chaos_mr_t2_13")
    mask = sitk.ReadImage(str(tmp_path / "out" / "chaos_mr_t2_13_image_liver.nii.gz"))
    assert mask.GetSize() == image.GetSize() and np.allclose(mask.GetDirection(), image.GetDirection())
    predicted, manual = sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(truth) > 0
    assert 2 * (predicted & manual).sum() / (predicted.sum() + manual.sum()) > 0.75
    assert liver_stats(image, mask)["side"] == "right"
