"""The built-in phantoms: anatomy, physics of each modality, geometry, determinism, datalists."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_script

from bundle.data.phantoms import LABELS, MR_SEQUENCES, make_phantoms


def load(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def liver_rank(image: np.ndarray, labels: np.ndarray) -> float:
    """Where the liver's median sits in the body's intensity distribution (0 darkest, 1 brightest)."""
    return float((image[labels > 0] < np.median(image[labels == 1])).mean())


def test_every_organ_is_present_and_liver_mask_matches_label_map(phantoms):
    for prefix in ("ct/ct_000", "mr/mr_000"):
        labels = load(phantoms / f"{prefix}_labels.nii.gz")
        assert set(np.unique(labels).astype(int)) == set(LABELS.values())
        np.testing.assert_array_equal(load(phantoms / f"{prefix}_liver.nii.gz"), labels == LABELS["liver"])


def test_ct_is_in_hounsfield_units_with_noise(phantoms):
    ct, labels = load(phantoms / "ct/ct_000_image.nii.gz"), load(phantoms / "ct/ct_000_labels.nii.gz")
    mean = {name: ct[labels == i].mean() for name, i in LABELS.items()}
    assert -1010 < mean["background"] < -980
    assert -130 < mean["subcutaneous_fat"] < -70
    assert 40 < mean["liver"] < 150 and 20 < mean["muscle"] < 80
    assert mean["spine"] > 200 and mean["gas"] < -800
    assert 5 < ct[labels == LABELS["background"]].std() < 30  # quantum noise, not a clean cartoon


@pytest.mark.parametrize("subject", ["mr_000", "mr_001", "mr_002"])
def test_mr_tissue_contrasts_are_ordered_as_in_real_scans(phantoms, subject):
    labels = load(phantoms / f"mr/{subject}_labels.nii.gz")
    mean = {s: {n: load(phantoms / f"mr/{subject}_{s}_image.nii.gz")[labels == i].mean() for n, i in LABELS.items()} for s in MR_SEQUENCES}
    pre, art, pv, t2 = (mean[s] for s in MR_SEQUENCES)
    assert pre["subcutaneous_fat"] > pre["liver"] > pre["spleen"] > pre["aorta"]  # T1: fat bright, liver > spleen
    assert art["aorta"] > art["liver"] and art["kidney_left"] > art["liver"]  # arterial: vessels and kidneys first
    assert pv["liver"] / pv["muscle"] > pre["liver"] / pre["muscle"]  # portal-venous: the liver enhances
    assert t2["bowel"] > t2["spleen"] > t2["liver"] > t2["muscle"]  # T2: fluid and spleen bright, liver dark
    assert t2["subcutaneous_fat"] < t2["liver"]  # fat-suppressed T2 (SPIR), like CHAOS


def test_mr_has_rician_noise_and_a_smooth_bias_field(phantoms):
    image, labels = load(phantoms / "mr/mr_000_t1_pre_image.nii.gz"), load(phantoms / "mr/mr_000_labels.nii.gz")
    air = image[labels == 0]
    assert image.min() >= 0 and air.mean() > 0  # magnitude images: noise is never negative
    assert 1.6 < air.mean() / air.std() < 2.2  # Rayleigh background: mean/std = 1.91
    fat = labels == LABELS["subcutaneous_fat"]
    x, y, z = (np.nonzero(fat)[a] for a in range(3))
    octant = 4 * (z > np.median(z)) + 2 * (y > np.median(y)) + (x > np.median(x))
    means = np.array([image[fat][octant == k].mean() for k in range(8)])
    noise_sem = image[fat].std() / np.sqrt(fat.sum() / 8)
    assert means.std() > 3 * noise_sem  # fat signal drifts across the body: coil bias


def test_domain_shift_moves_the_liver_within_the_histogram(phantoms):
    """Paper Fig. 1: relative to the whole image, the liver is bright on CT, not on T1 pre or T2."""
    ct_rank = liver_rank(load(phantoms / "ct/ct_000_image.nii.gz"), load(phantoms / "ct/ct_000_labels.nii.gz"))
    labels = load(phantoms / "mr/mr_000_labels.nii.gz")
    for sequence in ("t1_pre", "t2"):
        assert ct_rank - liver_rank(load(phantoms / f"mr/mr_000_{sequence}_image.nii.gz"), labels) > 0.2


def test_geometry_is_physical_anisotropic_and_liver_on_patients_right(phantoms):
    """NIfTI world coordinates are RAS: the patient's right is +x (real CHAOS CT agrees, see test_real_data)."""
    for prefix in ("ct/ct_001", "mr/mr_002"):
        liver = nib.load(phantoms / f"{prefix}_liver.nii.gz")
        labels = nib.load(phantoms / f"{prefix}_labels.nii.gz").get_fdata()
        zooms = liver.header.get_zooms()
        assert zooms[0] == zooms[1] and abs(zooms[2] / zooms[0] - 1) > 0.2  # anisotropic, as clinical scans
        liver_x = nib.affines.apply_affine(liver.affine, np.argwhere(liver.get_fdata() > 0))[:, 0].mean()
        body_x = nib.affines.apply_affine(liver.affine, np.argwhere(labels > 0))[:, 0].mean()
        assert liver_x > body_x + 20


def test_same_seed_same_subjects_and_subjects_do_not_depend_on_count(tmp_path):
    make_phantoms(tmp_path / "a", n_ct=1, n_mr=2, seed=7, size=32)
    make_phantoms(tmp_path / "b", n_ct=2, n_mr=3, seed=7, size=32)
    make_phantoms(tmp_path / "c", n_ct=1, n_mr=2, seed=8, size=32)
    for name in ("ct/ct_000_image.nii.gz", "mr/mr_001_t2_image.nii.gz", "mr/mr_001_labels.nii.gz"):
        np.testing.assert_array_equal(load(tmp_path / "a" / name), load(tmp_path / "b" / name))
        assert not np.array_equal(load(tmp_path / "a" / name), load(tmp_path / "c" / name))


def test_ct_and_mr_subjects_are_different_people(phantoms):
    ct = sitk.ReadImage(str(phantoms / "ct/ct_000_liver.nii.gz"))
    mr = sitk.ReadImage(str(phantoms / "mr/mr_000_liver.nii.gz"))
    volume = lambda im: sitk.GetArrayViewFromImage(im).sum() * np.prod(im.GetSpacing())  # noqa: E731
    assert ct.GetSpacing() != mr.GetSpacing()
    assert abs(volume(ct) - volume(mr)) / volume(ct) > 0.01


def test_datalists_split_mr_subjects_and_point_at_existing_files(phantoms):
    main = json.loads((phantoms / "datalist.json").read_text())
    assert [e["subject"] for e in main["source"]] == ["ct_000", "ct_001"]
    assert all("label" not in e for e in main["target"])  # target images are unlabelled for adaptation
    target, test = {e["subject"] for e in main["target"]}, {e["subject"] for e in main["target_test"]}
    assert target == {"mr_000", "mr_001"} and test == {"mr_002"}
    assert {e["sequence"] for e in main["target"]} == {"t1_pre"}
    multiphase = json.loads((phantoms / "datalist_multiphase.json").read_text())
    assert sorted(e["sequence"] for e in multiphase["target_test"]) == sorted(MR_SEQUENCES[:3])
    for entry in main["source"] + main["target"] + main["target_test"] + multiphase["target"]:
        for key in ("image", "label"):
            if key in entry:
                assert (phantoms / entry[key]).is_file(), entry[key]


def test_cli_writes_phantoms_datalists_and_figure(tmp_path):
    result = run_script("make_phantoms.py", "--out", tmp_path / "p", "--n_ct", 1, "--n_mr", 2, "--seed", 1, "--size", 32, "--figure", tmp_path / "fig.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p/datalist_t2.json").is_file() and (tmp_path / "fig.png").stat().st_size > 10_000
    assert "1 CT and 2 MR subjects" in result.stdout


def test_cli_rejects_impossible_split(tmp_path):
    result = run_script("make_phantoms.py", "--out", tmp_path / "p", "--n_ct", 1, "--n_mr", 1)
    assert result.returncode != 0 and "n_mr" in result.stderr
    assert not (tmp_path / "p").exists()
