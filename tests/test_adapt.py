"""Cohort adaptation (configs/adapt.yaml, bundle/adapt.py) end to end on phantoms, and its refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import run as run_bundle

from bundle.adapt import IGNORE
from conftest import ROOT

SIZES = {"image_size": 64, "unet_channels": [8, 16, 32, 64, 128]}
TRUST_ALL = {"liver_ml": [1, 1e5], "fov_cut": "none"}  # a 2-epoch phantom model is no clinical liver model: let every case through


@pytest.fixture(scope="module")
def model(phantoms, tmp_path_factory):
    """A UNet on the images (no adaptation) trained 2 epochs on the phantom CT."""
    out = tmp_path_factory.mktemp("model")
    run_bundle("training", config_file=str(ROOT / "configs/train.yaml"), dataset_dir=str(phantoms), output_dir=str(out), ckpt_dir=str(out),
               max_epochs=2, **SIZES)
    return out / "model.pt"


@pytest.fixture
def cohort(phantoms, tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    for name in ("mr_000_t2_image.nii.gz", "mr_001_t2_image.nii.gz"):
        shutil.copy(phantoms / "mr" / name, folder / name)
    return folder


def adapt(cohort, out, model, *extra, quality=TRUST_ALL):
    args = [sys.executable, "-m", "monai.bundle", "run", "adapt", "--config_file", "configs/adapt.yaml", "--dataset_dir", str(cohort),
            "--output_dir", str(out), "--model_path", str(model), "--image_size", "64", "--unet_channels", "[8, 16, 32, 64, 128]",
            "--inference_overrides#quality", json.dumps(quality), "--max_epochs", "1", "--iterations_per_epoch", "2", *extra]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_adapt_writes_a_model_inference_loads_the_cohorts_masks_and_its_log(model, cohort, tmp_path):
    shipped = (ROOT / "models/model.pt").read_bytes()
    out = tmp_path / "out"
    result = adapt(cohort, out, model)
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((out / "adapt.json").read_text())
    assert log["trusted_cases"] == 2 and log["cohort_slices"] > 0 and log["adapted_from"] == str(model)
    assert sorted(log["masks"]) == ["mr_000_t2_image", "mr_001_t2_image"] and (out / "masks/report.html").is_file()
    for case in log["cases"]:  # the pseudo-labels: the mask where the ensemble is sure, the rest ignored
        label = np.asarray(nib.load(case["label"]).dataobj)
        assert set(np.unique(label)) <= {0, 1, IGNORE} and (label == 1).any() and 0 < case["trusted_voxels"] <= 1
    before, after = torch.load(model, weights_only=True), torch.load(out / "model.pt", weights_only=True)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before if k.startswith("unet."))
    run_bundle("inference", config_file=str(ROOT / "configs/inference.yaml"), dataset_dir=str(cohort), output_dir=str(tmp_path / "again"),
               model_path=str(out / "model.pt"), **SIZES)
    for case in log["masks"]:  # what inference writes with the adapted model is what adapt wrote
        ours, theirs = (np.asarray(nib.load(f / f"{case}_liver.nii.gz").dataobj) for f in (out / "masks", tmp_path / "again"))
        assert np.array_equal(ours, theirs)
    assert (ROOT / "models/model.pt").read_bytes() == shipped  # never replaced unless asked (--publish true)
    pseudo = (out / "pseudo/pseudo_labels.json").stat().st_mtime_ns
    again = adapt(cohort, out, model)  # a finished run says so and changes nothing
    assert again.returncode == 0 and "adapted before" in again.stdout + again.stderr
    assert (out / "pseudo/pseudo_labels.json").stat().st_mtime_ns == pseudo


def _last_line(result) -> str:
    return [line for line in result.stderr.splitlines() if line.strip()][-1]


def test_adapt_refuses_an_empty_or_unreadable_cohort_and_a_cohort_it_cannot_trust(model, cohort, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = adapt(empty, tmp_path / "o1", model)
    assert result.returncode == 2 and _last_line(result).startswith(f"error: {empty}") and not (tmp_path / "o1").exists()
    (cohort / "broken.nii.gz").write_bytes(b"not a volume")
    result = adapt(cohort, tmp_path / "o2", model)
    assert result.returncode == 2 and "broken.nii.gz" in _last_line(result) and not (tmp_path / "o2").exists()
    (cohort / "broken.nii.gz").unlink()
    result = adapt(cohort, tmp_path / "o3", model, quality={"liver_ml": [1e6, 2e6]})  # no liver is that large: nothing is trusted
    assert result.returncode == 2 and "nothing to adapt on; the model is unchanged" in _last_line(result)
    assert not (tmp_path / "o3/model.pt").exists() and (tmp_path / "o3/pseudo/summary.csv").is_file()


def test_cohort_slices_keep_the_ignored_voxels_and_add_the_source_ct_with_its_label_maps(phantoms, tmp_path):
    from bundle.adapt import CohortSlices, bundle_part
    from bundle.data.datalist import read_datalist
    mr = read_datalist(phantoms / "datalist.json", "target_test")[0]
    label = nib.load(mr["label"])
    pseudo = np.asarray(label.dataobj).astype(np.uint8)
    pseudo[: pseudo.shape[0] // 2] = IGNORE  # half the volume untrusted
    pseudo[..., :2] = IGNORE  # and two whole slices: they are left out
    nib.save(nib.Nifti1Image(pseudo, label.affine), str(tmp_path / "pseudo.nii.gz"))
    trusted = [{"image": mr["image"], "label": str(tmp_path / "pseudo.nii.gz")}]
    alone = CohortSlices(trusted, 64)
    assert set(torch.unique(alone.labels).tolist()) <= {0.0, 1.0, float(IGNORE)} and (alone.labels == IGNORE).any()
    assert alone.counts == {"cohort_slices": len(alone)} and all((alone.labels[i] != IGNORE).any() for i in range(len(alone)))
    augmentation = bundle_part(ROOT, "train.yaml", "train#augmentation", {"synthesis": True, "image_size": 64})
    both = CohortSlices(trusted, 64, datalist=phantoms / "datalist.json", transform=augmentation)
    assert both.counts["source_slices"] > 0 and len(both.tissues) == both.counts["source_slices"]
    batch = next(iter(torch.utils.data.DataLoader(both, batch_size=len(both))))  # CT (re-rendered) and MR items batch together
    assert set(batch) == {"image", "label"} and batch["image"].shape[0] == len(both)


def test_a_cohort_of_one_adapts_on_the_spot(model, cohort, tmp_path):
    """Test-time adaptation of one hard scan: a cohort of one volume with a time budget of its own."""
    (cohort / "mr_001_t2_image.nii.gz").unlink()
    run_bundle("adapt", config_file=str(ROOT / "configs/adapt.yaml"), bundle_root=str(ROOT), dataset_dir=str(cohort), output_dir=str(tmp_path / "one"),
               model_path=str(model), max_minutes=2, max_epochs=1, iterations_per_epoch=2, **SIZES, **{"inference_overrides#quality": TRUST_ALL})
    log = json.loads((tmp_path / "one/adapt.json").read_text())
    assert log["trusted_cases"] == 1 and list(log["masks"]) == ["mr_000_t2_image"] and (tmp_path / "one/model.pt").is_file()
