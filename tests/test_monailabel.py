"""The bundle in MONAI Label 0.8.5: its real bundle infer and train tasks, and its server over HTTP, on phantom MR volumes.

The bundle folder is a copy of this repository's configs with the network sizes made small (the
only edit a user with a small model would make), with weights from a short stage 1 and stage 2.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from monai.bundle import run as run_bundle

pytest.importorskip("monailabel", reason="MONAI Label is installed by `make` (requirements-monailabel.txt)")
requests = pytest.importorskip("requests", reason="MONAI Label's server dependencies are installed by `make` (requirements-monailabel.txt)")

STUBS = Path(__file__).parent / "stubs"  # torchvision's stand-in (stubs/torchvision), for this process and the server's
if importlib.util.find_spec("torchvision") is None:
    sys.path.insert(0, str(STUBS))

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


def monailabel_infer(bundle: Path, image: Path, task: BundleInferTask | None = None) -> np.ndarray:
    task = task or BundleInferTask(str(bundle), {})
    assert task.is_valid()
    label_file, result = task({"image": str(image), "device": "cpu", "result_extension": ".nii.gz"})
    mask = np.asarray(nib.load(label_file).dataobj)
    quality = result["quality"]  # the case's quality numbers and flags reach the client (Slicer)
    assert quality["liver_ml"] == pytest.approx(float((mask > 0).sum()) * float(np.prod(nib.load(label_file).header.get_zooms()[:3])) / 1000, rel=1e-3)
    assert isinstance(quality["flags"], list) and 0 <= quality["confidence"] <= 1
    return mask


def labelled_datastore(phantoms: Path, folder: Path) -> LocalDatastore:
    """A MONAI Label datastore of 3 phantom MR volumes with final labels."""
    (folder / "labels/final").mkdir(parents=True)
    for subject in ("mr_000", "mr_001", "mr_002"):
        shutil.copy(phantoms / f"mr/{subject}_t1_pre_image.nii.gz", folder / f"{subject}.nii.gz")
        shutil.copy(phantoms / f"mr/{subject}_liver.nii.gz", folder / f"labels/final/{subject}.nii.gz")
    return LocalDatastore(str(folder), extensions=("*.nii.gz",), auto_reload=False)


def test_monailabel_infer_matches_bundle_inference(bundle_dir, mr_volume, tmp_path):
    ours = bundle_inference(bundle_dir, mr_volume, tmp_path / "ours")
    theirs = monailabel_infer(bundle_dir, mr_volume)
    assert theirs.shape == ours.shape == nib.load(mr_volume).shape
    assert ours.any()
    assert np.array_equal(theirs > 0, ours > 0)


def test_monailabel_train_updates_the_model(bundle_dir, phantoms, mr_volume, tmp_path):
    datastore = labelled_datastore(phantoms, tmp_path / "datastore")
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


def test_monailabel_serves_a_dual_path_and_then_the_unet_its_training_publishes(bundle_dir, phantoms, mr_volume, tmp_path):
    """The shipped model as a dual path: MONAI Label's infer task builds that network once; its train
    task starts a UNet from the dual path's image UNet and publishes it; the same infer task then
    serves that UNet (no restart), equal to `monai.bundle run inference`, which builds it anew."""
    from bundle.networks import recorded_adaptation
    from bundle.shipping import ship_weights

    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle, ignore=shutil.ignore_patterns("runs"))
    run_bundle("training", config_file=str(bundle / "configs/train.yaml"), bundle_root=str(bundle), dataset_dir=str(phantoms),
               train_section="target_test", adaptation="dadr", max_epochs=1, output_dir=str(tmp_path / "dadr"), ckpt_dir=str(tmp_path / "dadr"))
    ship_weights(tmp_path / "dadr/model.pt", bundle / "models/drl.pth", bundle / "models", image_model=bundle_dir / "models/model.pt")
    assert recorded_adaptation(bundle / "models/model.pt") == "dual"
    task = BundleInferTask(str(bundle), {})
    served = monailabel_infer(bundle, mr_volume, task)
    assert np.array_equal(served > 0, bundle_inference(bundle, mr_volume, tmp_path / "dual") > 0)

    dual = torch.load(bundle / "models/model.pt", weights_only=True)
    train = BundleTrainTask(str(bundle), {})
    train({"model": "dadr_liver", "device": "cpu", "max_epochs": 1, "val_split": 0.34, "multi_gpu": False, "pretrained": True},
          labelled_datastore(phantoms, tmp_path / "datastore"))
    unet = torch.load(bundle / "models/model.pt", weights_only=True)
    assert recorded_adaptation(bundle / "models/model.pt") == "none"

    def distance(prefix: str) -> float:
        return sum((unet[k].float() - dual[prefix + k].float()).abs().sum().item() for k in unet if k.startswith("unet."))
    assert distance("image_") < 0.75 * distance("")  # fine-tuned from the image UNet, not the content path's (one epoch on phantoms moves it a long way: 0.63 of the other distance)
    after = monailabel_infer(bundle, mr_volume, task)  # the network built for the dual path, reloaded
    assert np.array_equal(after > 0, bundle_inference(bundle, mr_volume, tmp_path / "unet") > 0)


SAMPLE_APP = Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle"  # shipped in the monailabel wheel


@pytest.fixture
def server(bundle_dir, phantoms, tmp_path):
    """``monailabel start_server`` on 127.0.0.1 with the wheel's monaibundle app, a copy of the
    bundle as its model ``dadr_liver`` and a studies folder of 3 phantom MR volumes; stopped after
    the test. Yields (base URL, the bundle folder the server uses, the studies folder)."""
    if not SAMPLE_APP.is_dir():
        pytest.skip(f"{SAMPLE_APP} is absent (MONAI Label installed without its sample apps)")
    app, studies = tmp_path / "app", tmp_path / "studies"
    shutil.copytree(SAMPLE_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(bundle_dir, app / "model" / "dadr_liver", ignore=shutil.ignore_patterns("runs"))
    studies.mkdir()
    for subject in ("mr_000", "mr_001", "mr_002"):
        shutil.copy(phantoms / f"mr/{subject}_t1_pre_image.nii.gz", studies / f"{subject}.nii.gz")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(STUBS), os.environ.get("PYTHONPATH", "")])}
    log = (tmp_path / "server.log").open("w")
    # zoo_source other than monaihosting: the model comes from app/model, nothing is downloaded
    process = subprocess.Popen([sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
                                "--conf", "models", "dadr_liver", "--conf", "zoo_source", "github", "--conf", "sam2", "false",
                                "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if process.poll() is not None:
                pytest.fail(f"the server stopped (exit {process.returncode}): {(tmp_path / 'server.log').read_text()[-3000:]}")
            try:
                requests.get(f"{url}/info/", timeout=5).raise_for_status()
                break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            pytest.fail(f"the server did not answer in 120 s: {(tmp_path / 'server.log').read_text()[-3000:]}")
        yield url, app / "model" / "dadr_liver", studies
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_monailabel_server_serves_and_trains_the_bundle_over_http(server, phantoms, tmp_path):
    """What 3D Slicer does: /info, /infer on a study (the mask equals `monai.bundle run inference`'s
    voxel for voxel), labels saved to the datastore, then /train, which changes the UNet."""
    url, bundle, studies = server
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert "dadr_liver" in info["models"] and "dadr_liver" in info["trainers"]
    assert info["models"]["dadr_liver"]["labels"] == {"liver": 1} and info["datastore"]["total"] == 3

    response = requests.post(f"{url}/infer/dadr_liver", params={"image": "mr_000", "output": "image"}, timeout=300)
    assert response.status_code == 200, response.text[-2000:]
    (tmp_path / "served.nii.gz").write_bytes(response.content)
    served = np.asarray(nib.load(tmp_path / "served.nii.gz").dataobj)
    (tmp_path / "input").mkdir()  # the studies folder now holds the datastore's own files too
    ours = bundle_inference(bundle, Path(shutil.copy(studies / "mr_000.nii.gz", tmp_path / "input")), tmp_path / "ours")
    assert served.shape == ours.shape and ours.any()
    assert np.array_equal(served > 0, ours > 0)

    for subject in ("mr_000", "mr_001", "mr_002"):  # Slicer's "submit label"
        with (phantoms / f"mr/{subject}_liver.nii.gz").open("rb") as label:
            response = requests.put(f"{url}/datastore/label", params={"image": subject, "tag": "final"}, files={"label": label}, timeout=60)
        assert response.status_code == 200, response.text[-2000:]
    assert requests.get(f"{url}/datastore/", params={"output": "stats"}, timeout=30).json()["completed"] == 3
    before = torch.load(bundle / "models/model.pt", weights_only=True)
    response = requests.post(f"{url}/train/dadr_liver", params={"run_sync": "true"}, timeout=600,
                             json={"max_epochs": 2, "device": "cpu", "multi_gpu": False, "val_split": 0.34})
    assert response.status_code == 200, response.text[-2000:]
    after = torch.load(bundle / "models/model.pt", weights_only=True)
    assert [k for k in after if k.startswith("unet.") and not torch.equal(before[k], after[k])], "the server's training did not change the UNet"
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("content_path."))  # frozen
