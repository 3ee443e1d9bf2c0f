"""Bad input to the CLIs: one clear error naming the file, exit code 2, nothing half-written."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_script

from bundle.atomic import atomic_outputs


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def bad(phantoms, tmp_path) -> dict:
    """Broken inputs next to a good image and mask."""
    good_image, good_mask = phantoms / "ct/ct_000_image.nii.gz", phantoms / "ct/ct_000_liver.nii.gz"
    ct = sitk.ReadImage(str(good_image))
    raw = gzip.decompress(good_image.read_bytes())
    (tmp_path / "truncated.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))
    (tmp_path / "garbage.nii.gz").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "notes.txt").write_text("not an image")
    nan = sitk.GetArrayFromImage(ct)
    nan[3, 10, 10] = np.nan
    nan_image = sitk.GetImageFromArray(nan)
    nan_image.CopyInformation(ct)
    empty = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ct)
    zero = sitk.Image(ct.GetSize(), sitk.sitkInt16)
    zero.CopyInformation(ct)
    far = sitk.ReadImage(str(good_mask))
    far.SetOrigin([o + 2000 for o in far.GetOrigin()])
    (tmp_path / "no_dicom").mkdir()
    (tmp_path / "few_pngs").mkdir()
    write(sitk.Image([ct.GetSize()[0], ct.GetSize()[1]], sitk.sitkUInt8), tmp_path / "few_pngs/liver_GT_000.png")
    (tmp_path / "a_file").write_text("x")
    return {
        "good_image": good_image, "good_mask": good_mask, "dir": tmp_path,
        "truncated": tmp_path / "truncated.nii.gz", "garbage": tmp_path / "garbage.nii.gz", "text": tmp_path / "notes.txt",
        "2d": write(ct[:, :, 5], tmp_path / "slice2d.nii.gz"), "1slice": write(ct[:, :, 5:6], tmp_path / "one_slice.nii.gz"),
        "4d": write(sitk.JoinSeries([ct, ct]), tmp_path / "four_d.nii.gz"), "nan": write(nan_image, tmp_path / "nan.nii.gz"),
        "empty": write(empty, tmp_path / "empty_mask.nii.gz"), "zero": write(zero, tmp_path / "all_zero.nii.gz"), "far": write(far, tmp_path / "far_mask.nii.gz"),
        "no_dicom": tmp_path / "no_dicom", "few_pngs": tmp_path / "few_pngs", "unwritable": tmp_path / "a_file/out",
    }


CASES = [
    # (image, mask, extra args, offending input, words of the problem)
    ("missing", "good_mask", [], "missing", "does not exist"),
    ("truncated", "good_mask", [], "truncated", "cannot be read"),
    ("garbage", "good_mask", [], "garbage", "cannot be read"),
    ("text", "good_mask", [], "text", "unsupported file type"),
    ("2d", "good_mask", [], "2d", "is 2D"),
    ("1slice", "good_mask", [], "1slice", "is 2D"),
    ("4d", "good_mask", [], "4d", "is 4D"),
    ("nan", "good_mask", [], "nan", "NaN"),
    ("zero", "good_mask", [], "zero", "has the value 0 in every voxel"),
    ("no_dicom", "good_mask", [], "no_dicom", "no DICOM series"),
    ("good_image", "empty", [], "empty", "empty"),
    ("good_image", "far", [], "far", "does not overlap"),
    ("good_image", "good_mask", ["--liver_label", "42"], "good_mask", "no voxels with liver label 42"),
    ("good_image", "few_pngs", [], "few_pngs", "has 1 PNG slices but the image"),
    ("good_image", "truncated", [], "truncated", "cannot be read"),
]


@pytest.mark.parametrize("image,mask,extra,culprit,problem", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_prepare_case_rejects_bad_input(bad, image, mask, extra, culprit, problem):
    paths = {**bad, "missing": bad["dir"] / "missing.nii.gz"}
    out = bad["dir"] / "out"
    result = run_script("prepare_data.py", "case", "--image", paths[image], "--mask", paths[mask], "--out", out, "--name", "c", *extra)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {paths[culprit]}") and problem in error, error
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_folder_is_named(bad):
    for script, args in (
        ("prepare_data.py", ["case", "--image", bad["good_image"], "--mask", bad["good_mask"], "--name", "c", "--out", bad["unwritable"]]),
        ("make_phantoms.py", ["--n_ct", 1, "--n_mr", 2, "--size", 32, "--out", bad["unwritable"]]),
    ):
        result = run_script(script, *args)
        assert result.returncode == 2
        assert f"error: {bad['unwritable']}: output folder cannot be created" in result.stderr


def test_chaos_and_datalist_commands_reject_wrong_folders(bad):
    result = run_script("prepare_data.py", "chaos", "--root", bad["no_dicom"], "--out", bad["dir"] / "out")
    assert result.returncode == 2 and "is not a CHAOS training-set folder" in result.stderr
    result = run_script("prepare_data.py", "datalist", "--source", bad["no_dicom"], "--target", bad["no_dicom"], "--out", bad["dir"] / "d.json")
    assert result.returncode == 2 and f"{bad['no_dicom']}: holds no *_image.nii.gz files" in result.stderr
    assert not (bad["dir"] / "d.json").exists()


def test_failed_block_leaves_neither_final_nor_temporary_files(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_outputs([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]) as (a, b):
            a.write_text("half")
            raise RuntimeError("killed while writing b")
    assert list(tmp_path.iterdir()) == []


def test_a_nan_volume_in_a_training_datalist_stops_both_stages_naming_the_file(phantoms, tmp_path):
    """MONAI's LoadImage would fall back to nibabel and train on the NaN; our loader names it."""
    import json
    import shutil

    from bundle.data.slices import load_slices
    from bundle.errors import DataError

    data = tmp_path / "data"
    shutil.copytree(phantoms, data)
    image = data / json.loads((data / "datalist.json").read_text())["source"][0]["image"]
    volume = sitk.ReadImage(str(image), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(volume)
    array[2, 5, 5] = np.nan
    poisoned = sitk.GetImageFromArray(array)
    poisoned.CopyInformation(volume)
    write(poisoned, image)
    for workers in (0, 2):
        with pytest.raises(DataError, match=f"{image.name}: has 1 NaN or infinite voxels"):
            load_slices(data / "datalist.json", "source", "ct", 64, num_workers=workers)


def test_a_non_finite_stage2_loss_stops_before_the_weights_change():
    import torch
    from monai.engines import SupervisedTrainer
    from monai.networks.nets import UNet

    from bundle.engines import FiniteLossCheck

    network = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    loader = [{"image": torch.rand(2, 1, 16, 16), "label": torch.ones(2, 1, 16, 16)}]
    trainer = SupervisedTrainer("cpu", 1, loader, network, torch.optim.SGD(network.parameters(), 0.1),
                                loss_function=lambda pred, label: pred.mean() * float("nan"), train_handlers=[FiniteLossCheck()])
    with pytest.raises(FloatingPointError, match="non-finite stage-2 loss nan at epoch 1, iteration 1"):
        trainer.run()
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_a_dicom_series_with_a_lost_slice_is_an_error_not_a_stretched_volume(phantoms, tmp_path, damage):
    """ITK would read 19 of 20 slices and spread them over the 20 slices' extent."""
    from bundle.data.export import write_dicom_series
    from bundle.data.readers import read_image
    from bundle.errors import DataError

    image = sitk.ReadImage(str(phantoms / "mr/mr_000_t1_pre_image.nii.gz"))
    folder = tmp_path / "series"
    write_dicom_series(sitk.Cast(image, sitk.sitkInt16), folder, modality="MR")
    files = sorted(folder.iterdir())
    assert read_image(folder).image.GetSize() == image.GetSize()  # intact: read as it was written
    victim = files[len(files) // 2]
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(b"\0" * 200)
    with pytest.raises(DataError, match=f"{folder}: DICOM slices are not evenly spaced: .* mm between slices"):
        read_image(folder)


def test_prepare_case_never_overwrites_its_own_inputs(bad, tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    image, mask = folder / "p_image.nii.gz", folder / "p_liver.nii.gz"
    image.write_bytes(bad["good_image"].read_bytes())
    mask.write_bytes(bad["good_mask"].read_bytes())
    before = image.read_bytes(), mask.read_bytes()
    result = run_script("prepare_data.py", "case", "--image", image, "--mask", mask, "--out", folder, "--name", "p")
    assert result.returncode == 2 and f"error: {image}: is an input of this command and would be overwritten" in result.stderr
    assert (image.read_bytes(), mask.read_bytes()) == before


def test_a_sheared_affine_is_named_as_such_not_as_a_corrupt_file(tmp_path):
    import nibabel as nib

    from bundle.data.readers import read_image
    from bundle.errors import DataError

    affine = np.array([[1.0, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]])  # a shear: not orthonormal
    path = tmp_path / "sheared.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32), affine), path)
    with pytest.raises(DataError) as raised:
        read_image(path)
    assert "non-orthonormal orientation" in str(raised.value) and "corrupt" not in str(raised.value)


def _fingerprint(folder: Path) -> dict:
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*")) if not p.is_symlink()}


def test_corpus_of_bad_scans_through_inference_and_preparation(phantoms, tmp_path):
    """Each of 20+ broken scans: named with its problem in one line, exit code 2 (inference),
    nothing written (no output, no temporary file), no input changed."""
    import subprocess
    import sys

    import torch
    from bad_inputs import make_corpus
    from conftest import ROOT

    from bundle.data.prepare import prepare_case
    from bundle.errors import DataError
    from bundle.networks import LiverSegmenter

    corpus = make_corpus(phantoms / "mr/mr_002_t1_pre_image.nii.gz", tmp_path / "corpus")
    assert len(corpus) >= 20
    before = _fingerprint(tmp_path / "corpus")
    torch.save(LiverSegmenter(64).state_dict(), tmp_path / "model.pt")
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
                             "--dataset_dir", str(tmp_path / "corpus"), "--output_dir", str(tmp_path / "out"), "--model_path",
                             str(tmp_path / "model.pt"), "--image_size", "64", "--adaptation", "none"],
                            cwd=ROOT, capture_output=True, text=True)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith(f"error: {tmp_path / 'corpus'}: {len(corpus)} of {len(corpus)} cases failed"), last
    for kind, (path, problem) in corpus.items():
        assert f"{path}: " in last and problem in last.split(f"{path}: ", 1)[1].split("; ")[0], (kind, last)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    for kind, (path, problem) in corpus.items():
        out = tmp_path / "prepared" / kind
        with pytest.raises(DataError) as raised:
            prepare_case(path, phantoms / "mr/mr_002_liver.nii.gz", out, "case")
        assert str(raised.value).startswith(f"{path}: ") and problem in str(raised.value), (kind, str(raised.value))
        assert not out.exists() or not any(out.iterdir())
    assert _fingerprint(tmp_path / "corpus") == before
