"""The bundle in MONAI Label 0.8.5's real bundle infer and train tasks, on phantom MR volumes.

The bundle folder is a copy of this repository's configs with the network sizes made small (the
only edit a user with a small model would make), with weights from a short stage 1 and stage 2.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import run as run_bundle

from conftest import ROOT

pytest.importorskip("monailabel", reason="MONAI Label is installed by `make` (requirements-monailabel.txt)")

if importlib.util.find_spec("torchvision") is None:
    # MONAI Label imports torchvision.utils at module level for pathology image grids that the
    # bundle tasks never call; there is no CPU build of torchvision for the pinned torch here.
    def _absent(*args, **kwargs):
        raise RuntimeError("torchvision is not installed")

    _utils = types.ModuleType("torchvision.utils")
    _utils.make_grid = _utils.save_image = _absent
    sys.modules["torchvision"] = types.ModuleType("torchvision")
    sys.modules["torchvision"].utils = _utils
    sys.modules["torchvision.utils"] = _utils

from monailabel.datastore.local import LocalDatastore  # noqa: E402
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: E402
from monailabel.tasks.train.bundle import BundleTrainTask  # noqa: E402

SMALL = {"image_size": 64, "dim": 8, "n_res": 2, "mlp_dim": 32}


@pytest.fixture(scope="module")
def bundle_dir(phantoms, tmp_path_factory) -> Path:
    """A bundle folder: configs with small sizes, models/drl.pth (short stage 1), models/model.pt (stage 2)."""
    root = tmp_path_factory.mktemp("bundle")
    shutil.copytree(ROOT / "configs", root / "configs")
    for name in ("drl_train.yaml", "train.yaml", "inference.yaml"):
        config = yaml.safe_load((root / "configs" / name).read_text())
        config.update(SMALL)
        if name == "train.yaml":
            config.update(train_modality="mr", val_modality="mr", max_epochs=2)  # a MONAI Label datastore holds MR
        (root / "configs" / name).write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "models").mkdir()
    run_bundle("training", config_file=str(root / "configs/drl_train.yaml"), bundle_root=str(root), dataset_dir=str(phantoms),
               max_iterations=20, val_interval=10, n_val_slices=4, drl_path=str(root / "models/drl.pth"))
    run_bundle("training", config_file=str(root / "configs/train.yaml"), bundle_root=str(root), dataset_dir=str(phantoms),
               train_section="target_test", max_epochs=3)
    assert not (root / "models/model.pt").exists()  # the command line's training never writes into models/
    run_bundle("run", config_file=str(root / "configs/train.yaml"), bundle_root=str(root), dataset_dir=str(phantoms),
               train_section="target_test", max_epochs=3)  # the workflow MONAI Label runs publishes its result
    assert (root / "models/drl.pth").is_file() and (root / "models/model.pt").is_file()
    assert (root / "models/model.pt").read_bytes() == (root / "runs/seg/model.pt").read_bytes()
    return root


def bundle_inference(bundle: Path, image: Path, out: Path) -> np.ndarray:
    run_bundle("inference", config_file=str(bundle / "configs/inference.yaml"), bundle_root=str(bundle),
               dataset_dir=str(image.parent), output_dir=str(out))
    return np.asarray(nib.load(out / image.name.replace(".nii.gz", "_liver.nii.gz")).dataobj)


@pytest.fixture
def mr_volume(phantoms, tmp_path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    return Path(shutil.copy(phantoms / "mr/mr_002_t1_pre_image.nii.gz", folder))


def monailabel_infer(bundle: Path, image: Path) -> np.ndarray:
    task = BundleInferTask(str(bundle), {})
    assert task.is_valid()
    label_file, _ = task({"image": str(image), "device": "cpu", "result_extension": ".nii.gz"})
    return np.asarray(nib.load(label_file).dataobj)


def test_monailabel_infer_matches_bundle_inference(bundle_dir, mr_volume, tmp_path):
    ours = bundle_inference(bundle_dir, mr_volume, tmp_path / "ours")
    theirs = monailabel_infer(bundle_dir, mr_volume)
    assert theirs.shape == ours.shape == nib.load(mr_volume).shape
    assert ours.any()
    assert np.array_equal(theirs > 0, ours > 0)


def test_monailabel_train_updates_the_model(bundle_dir, phantoms, mr_volume, tmp_path):
    store = tmp_path / "datastore"
    (store / "labels/final").mkdir(parents=True)
    for subject in ("mr_000", "mr_001", "mr_002"):
        shutil.copy(phantoms / f"mr/{subject}_t1_pre_image.nii.gz", store / f"{subject}.nii.gz")
        shutil.copy(phantoms / f"mr/{subject}_liver.nii.gz", store / f"labels/final/{subject}.nii.gz")
    datastore = LocalDatastore(str(store), extensions=("*.nii.gz",), auto_reload=False)
    before = torch.load(bundle_dir / "models/model.pt", weights_only=True)
    task = BundleTrainTask(str(bundle_dir), {})
    assert task.is_valid()
    task({"model": "dadr_liver", "device": "cpu", "max_epochs": 2, "val_split": 0.34, "multi_gpu": False, "pretrained": True}, datastore)
    after = torch.load(bundle_dir / "models/model.pt", weights_only=True)
    assert before.keys() == after.keys()
    changed = [k for k in after if k.startswith("unet.") and not torch.equal(before[k], after[k])]
    assert changed, "MONAI Label's training did not change the UNet"
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("content_path."))  # frozen
    # the retrained model.pt is what both inference paths now load
    assert np.array_equal(monailabel_infer(bundle_dir, mr_volume) > 0, bundle_inference(bundle_dir, mr_volume, tmp_path / "ours") > 0)
