"""Pseudo-label filters of self-training (bundle/self_training.py) on files with known content."""

import json

import nibabel as nib
import numpy as np
import pytest

from bundle.errors import DataError
from bundle.self_training import agreed_pseudo_labels, keep_pseudo_label, volume_stats


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


def test_two_teachers_pass_on_only_the_voxels_both_mark(tmp_path):
    """agreed_pseudo_labels: the intersection of the teachers' masks, its largest component, on the
    image's grid; a volume one teacher's filters dropped, or whose agreement is no plausible liver, is not kept."""
    a, b = np.zeros((30, 30, 10), np.uint8), np.zeros((30, 30, 10), np.uint8)
    a[2:20, 2:20, 2:8] = 1
    b[8:26, 8:26, 2:8] = 1  # overlap: [8:20, 8:20, 2:8], 864 voxels of 20 mm3 = 17.28 mL
    a[25:28, 0:3, 0:2] = b[25:28, 0:3, 0:2] = 1  # both mark a small island: not the liver
    small = np.zeros_like(a)
    small[0:2, 0:2, 0:2] = 1
    teachers = [[], []]
    for case, (ma, mb) in {"p1": (a, b), "p2": (small, small)}.items():
        for i, mask in enumerate((ma, mb)):
            (tmp_path / f"t{i}").mkdir(exist_ok=True)
            teachers[i].append({"image": f"/data/{case}.nii.gz", "subject": case, "label": str(_write(tmp_path / f"t{i}" / f"{case}.nii.gz", mask))})
    teachers[0].append({"image": "/data/p3.nii.gz", "subject": "p3", "label": str(_write(tmp_path / "t0" / "p3.nii.gz", a))})  # teacher 1 dropped p3
    kept = agreed_pseudo_labels(teachers, tmp_path / "agreed", liver_ml=(10.0, 100.0))
    assert [e["subject"] for e in kept] == ["p1"]
    agreed = nib.load(kept[0]["label"])
    expected = np.zeros_like(a)
    expected[8:20, 8:20, 2:8] = 1
    assert np.array_equal(np.asarray(agreed.dataobj), expected) and np.array_equal(agreed.affine, nib.load(teachers[0][0]["label"]).affine)
    report = {r["image"]: r for r in json.loads((tmp_path / "agreed" / "pseudo_labels.json").read_text())}
    assert report["/data/p1.nii.gz"]["liver_ml"] == pytest.approx(17.3, abs=0.05) and report["/data/p1.nii.gz"]["kept"]
    assert report["/data/p1.nii.gz"]["teachers_liver_ml"][0] == pytest.approx((18 * 18 * 6 + 3 * 3 * 2) * 0.02, abs=0.05)
    assert not report["/data/p2.nii.gz"]["kept"] and "/data/p3.nii.gz" not in report
    _write(tmp_path / "t1" / "p1.nii.gz", b[:, :, :5])
    with pytest.raises(DataError, match="differ in shape"):
        agreed_pseudo_labels(teachers, tmp_path / "bad", liver_ml=(10.0, 100.0))


def test_self_train_script_pseudo_labels_the_target_and_trains_a_student(phantoms, tmp_path, monkeypatch):
    """scripts/self_train.py on phantoms: every target MR is pseudo-labelled on its own grid (the
    filters opened: a 1-epoch teacher is no liver model), and the student trains on CT + those MR."""
    import importlib.util
    import json
    from pathlib import Path

    import torch

    import bundle.self_training as self_training
    from bundle.networks import DRLModule
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
    # two teachers (here the same one twice): each pseudo-labels on its own, the student learns where they agree;
    # this student is DADR's content path, its teachers UNets on the images
    torch.save(DRLModule(dim=8, image_size=64, shared_res=1).state_dict(), tmp_path / "drl.pt")  # the configs' sizes, untrained
    script.self_train(str(phantoms / "datalist.json"), f"{teacher},{teacher}", str(tmp_path / "pair"), seg_epochs=1, iterations_per_epoch=2,
                      adaptation="dadr", teacher_adaptation="none", drl_path=str(tmp_path / "drl.pt"), **sizes)
    assert any(k.startswith("content_path.") for k in torch.load(tmp_path / "pair" / "model.pt"))
    pair = json.loads((tmp_path / "pair" / "datalist.json").read_text())["target_pseudo"]
    assert len(pair) == len(targets)
    for entry in pair:
        name = Path(entry["label"]).name
        assert "pair/pseudo/masks" in entry["label"]
        one = np.asarray(nib.load(tmp_path / "pair" / "pseudo" / "teacher_0" / "masks" / name).dataobj) > 0
        assert np.array_equal(np.asarray(nib.load(entry["label"]).dataobj) > 0, one)
        assert (tmp_path / "pair" / "pseudo" / "teacher_1" / "masks" / name).is_file()
    assert (tmp_path / "pair" / "model.pt").is_file()


def test_datalist_paths_are_absolute_when_the_datalist_is_named_relatively(phantoms, monkeypatch):
    """The self-trained model's datalist is written elsewhere than the one it extends: its paths
    must not stay relative to the working directory (the shipped model's run failed on that)."""
    from pathlib import Path

    from bundle.data.datalist import read_datalist

    monkeypatch.chdir(phantoms.parent)
    entries = read_datalist(Path(phantoms.name) / "datalist.json", "source")
    assert entries and all(Path(e["image"]).is_absolute() and Path(e["label"]).is_file() for e in entries)
