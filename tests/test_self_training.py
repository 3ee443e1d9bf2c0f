"""Pseudo-label filters of self-training (bundle/self_training.py) on files with known content."""

import nibabel as nib
import numpy as np
import pytest

from bundle.errors import DataError
from bundle.self_training import keep_pseudo_label, volume_stats


def _write(path, array, zooms=(2.0, 2.0, 5.0)):
    image = nib.Nifti1Image(array, np.diag([*zooms, 1.0]))
    nib.save(image, str(path))
    return path


def test_volume_stats_reads_millilitres_and_entropy_inside_the_mask(tmp_path):
    mask = np.zeros((40, 40, 20), np.uint8)
    mask[10:30, 10:30, 5:15] = 1  # 4000 voxels of 20 mm3: 80 mL
    entropy = np.full(mask.shape, 0.6, np.float32)
    entropy[mask > 0] = 0.1  # confident inside, unsure outside: only the inside counts
    stats = volume_stats(_write(tmp_path / "m.nii.gz", mask), _write(tmp_path / "u.nii.gz", entropy))
    assert stats["liver_ml"] == pytest.approx(80.0)
    assert stats["mean_entropy"] == pytest.approx(0.1, abs=1e-4)
    empty = volume_stats(_write(tmp_path / "e.nii.gz", np.zeros_like(mask)), tmp_path / "u.nii.gz")
    assert empty["liver_ml"] == 0 and not keep_pseudo_label(empty, liver_ml=(0.0, 1e9), max_mean_entropy=1e9)
    with pytest.raises(DataError, match="has shape"):
        volume_stats(tmp_path / "m.nii.gz", _write(tmp_path / "bad.nii.gz", entropy[:, :, :10]))


def test_pseudo_labels_are_kept_only_when_plausible_and_confident():
    assert keep_pseudo_label({"liver_ml": 1500.0, "mean_entropy": 0.15})
    assert not keep_pseudo_label({"liver_ml": 150.0, "mean_entropy": 0.15})   # a liver fragment
    assert not keep_pseudo_label({"liver_ml": 6000.0, "mean_entropy": 0.15})  # half the abdomen
    assert not keep_pseudo_label({"liver_ml": 1500.0, "mean_entropy": 0.5})   # the ensemble disagrees
    assert keep_pseudo_label({"liver_ml": 150.0, "mean_entropy": 0.5}, liver_ml=(100.0, 200.0), max_mean_entropy=0.6)


def test_self_train_script_pseudo_labels_the_target_and_trains_a_student(phantoms, tmp_path, monkeypatch):
    """scripts/self_train.py on phantoms: every target MR is pseudo-labelled on its own grid (the
    filters opened: a 1-epoch teacher is no liver model), and the student trains on CT + those MR."""
    import importlib.util
    import json
    from pathlib import Path

    import torch

    import bundle.self_training as self_training
    from bundle.pipeline import run_stage2

    monkeypatch.setattr(self_training, "LIVER_ML", (0.0, float("inf")))
    monkeypatch.setattr(self_training, "MAX_MEAN_ENTROPY", float("inf"))
    sizes = {"image_size": 64, "dim": 8}
    teacher = run_stage2(phantoms, tmp_path / "teacher", "unused", 1, sizes, adaptation="none", iterations_per_epoch=2)
    spec = importlib.util.spec_from_file_location("self_train", Path(__file__).parents[1] / "scripts" / "self_train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.self_train(str(phantoms / "datalist.json"), str(teacher), str(tmp_path / "student"), seg_epochs=1, iterations_per_epoch=2, **sizes)
    student = json.loads((tmp_path / "student" / "datalist.json").read_text())
    targets = json.loads((phantoms / "datalist.json").read_text())["target"]
    assert len(student["target_pseudo"]) == len(targets)
    for entry in student["target_pseudo"]:
        assert nib.load(entry["label"]).shape == nib.load(entry["image"]).shape
        assert "student/pseudo/masks" in entry["label"]
    report = json.loads((tmp_path / "student" / "pseudo" / "pseudo_labels.json").read_text())
    assert all({"liver_ml", "mean_entropy", "kept"} <= set(r) for r in report)
    before, after = torch.load(teacher), torch.load(tmp_path / "student" / "model.pt")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("unet."))


def test_datalist_paths_are_absolute_when_the_datalist_is_named_relatively(phantoms, monkeypatch):
    """The self-trained model's datalist is written elsewhere than the one it extends: its paths
    must not stay relative to the working directory (the shipped model's run failed on that)."""
    from pathlib import Path

    from bundle.data.datalist import read_datalist

    monkeypatch.chdir(phantoms.parent)
    entries = read_datalist(Path(phantoms.name) / "datalist.json", "source")
    assert entries and all(Path(e["image"]).is_absolute() and Path(e["label"]).is_file() for e in entries)
