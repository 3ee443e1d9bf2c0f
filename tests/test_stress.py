"""The robustness suite (bundle/stress.py): each shift where it should be, the liver masks unchanged."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bundle.folds import LABELLED_MR_SECTIONS, labelled_entries
from bundle.stress import VARIANTS, VESSEL_PERCENTILE, make_stress_suite, stress_volume, suite_datalist


def _volume():
    """An LAS volume (as CHAOS): a body of 100 with a liver of 200 (a bright vessel of 400 inside) on the patient's right."""
    shape = (48, 40, 20)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    image = np.zeros(shape, np.float32)
    image[6:42, 6:34, :] = 100.0
    liver = ((x - 14) ** 2 + (y - 20) ** 2 < 64) & (z >= 4) & (z < 16)
    image[liver] = 200.0
    image[liver & (x == 14)] = 400.0
    affine = np.diag([-1.5, 1.5, 5.0, 1.0])  # x towards the patient's left, y anterior, z superior
    affine[:3, 3] = [30.0, -20.0, -50.0]
    return image, liver.astype(np.uint8), affine


def _run(variant, seed=0):
    image, liver, affine = _volume()
    return (image, liver, affine), stress_volume(image, liver, affine, variant, np.random.default_rng(seed))


def test_dark_liver_darkens_the_parenchyma_only_and_keeps_the_vessels():
    (image, liver, _), (dark, mask, _) = _run("dark_liver")
    assert np.array_equal(mask, liver)
    inside = liver > 0
    vessels = inside & (image > np.percentile(image[inside], VESSEL_PERCENTILE))
    assert np.array_equal(dark[~inside], image[~inside]) and np.array_equal(dark[vessels], image[vessels])
    ratio = np.median(dark[inside & ~vessels]) / np.median(image[inside & ~vessels])
    assert 0.3 <= ratio <= 0.5 and np.median(dark[inside & ~vessels]) < 100  # darker than the body around it


def test_bias_field_is_smooth_strong_and_leaves_the_mask():
    (image, liver, _), (biased, mask, _) = _run("bias_field")
    assert np.array_equal(mask, liver)
    body = image == 100.0
    ratio = biased[body] / image[body]
    assert ratio.max() / ratio.min() > 3.0 and np.allclose(np.median(ratio), 1.0, atol=0.35)
    assert np.abs(np.diff(biased[10:38, 20, 10] / image[10:38, 20, 10])).max() < 0.1  # smooth: no step between neighbours


def test_low_snr_adds_rician_noise_of_the_stated_level():
    (image, liver, _), (noisy, mask, _) = _run("low_snr")
    assert np.array_equal(mask, liver) and (noisy >= 0).all()
    body = image == 100.0
    assert np.isclose((noisy[body] - 100.0).std(), 0.15 * 200.0, rtol=0.15)


def test_low_resolution_blurs_on_the_same_grid():
    (image, liver, _), (low, mask, _) = _run("low_resolution")
    assert low.shape == image.shape and np.array_equal(mask, liver)
    edges = lambda a: np.abs(np.diff(a, axis=0)).sum()
    assert edges(low) < 0.8 * edges(image) and np.isclose(low.mean(), image.mean(), rtol=0.05)


def test_cut_dome_removes_the_livers_top_and_keeps_world_coordinates():
    (image, liver, affine), (cut, mask, shifted) = _run("cut_dome")
    removed = image.shape[2] - cut.shape[2]
    assert removed == round(0.3 * 12) + 4  # the liver spans 12 slices; everything above its cut goes
    assert np.array_equal(cut, image[:, :, : cut.shape[2]]) and np.array_equal(mask, liver[:, :, : cut.shape[2]])
    assert np.allclose(shifted, affine)  # the kept slices start where the volume started (z points superior)
    flipped = affine.copy()
    flipped[2, 2], flipped[2, 3] = -5.0, 50.0  # z towards the feet: the top is at the array's start
    _, mask2, shifted2 = stress_volume(image, liver, flipped, "cut_dome", np.random.default_rng(0))
    kept = liver.shape[2] - mask2.shape[2]
    assert np.array_equal(mask2, liver[:, :, kept:])
    assert np.allclose(shifted2 @ [0, 0, 0, 1], flipped @ [0, 0, kept, 1])


def test_ghosting_adds_ghosts_outside_the_body_and_keeps_the_mean():
    (image, liver, _), (ghosted, mask, _) = _run("ghosting")
    assert np.array_equal(mask, liver)
    outside = image == 0
    assert ghosted[outside].max() > 15.0 and ghosted[outside].mean() > 2.0 and np.isclose(ghosted.mean(), image.mean(), rtol=0.1)


def test_suite_is_made_once_per_variant_and_a_fold_keeps_its_subjects(phantoms, tmp_path):
    entries = labelled_entries(phantoms / "datalist_t2.json", LABELLED_MR_SECTIONS, "mr")
    made = make_stress_suite(entries, tmp_path / "suite", seed=0)
    assert set(made) == set(VARIANTS)
    for variant, datalist in made.items():
        listed = json.loads(datalist.read_text())["target_test"]
        assert sorted(e["subject"] for e in listed) == sorted(e["subject"] for e in entries)
        for entry, original in zip(listed, entries):
            image, label = nib.load(datalist.parent / entry["image"]), nib.load(datalist.parent / entry["label"])
            assert image.shape == label.shape
            if variant != "cut_dome":
                assert np.array_equal(np.asarray(label.dataobj), np.asarray(nib.load(original["label"]).dataobj) > 0)
    before = made["dark_liver"].stat().st_mtime_ns
    make_stress_suite(entries, tmp_path / "suite", seed=0)
    assert made["dark_liver"].stat().st_mtime_ns == before  # reused, not made again
    one = entries[0]["subject"]
    fold = json.loads(suite_datalist(made["low_snr"], [one], tmp_path / "fold.json").read_text())["target_test"]
    assert [e["subject"] for e in fold] == [one] and nib.load(fold[0]["image"]).shape
    with pytest.raises(Exception, match="none of the subjects"):
        suite_datalist(made["low_snr"], ["nobody"], tmp_path / "none.json")
    with pytest.raises(ValueError, match="unknown stress variants"):
        make_stress_suite(entries, tmp_path / "other", variants=["blur"])
