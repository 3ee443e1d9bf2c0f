"""Stage 2, the inference network, inference on folders of real files, and evaluation metrics."""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import run as run_bundle
from monai.networks.nets import UNet
from scipy import ndimage

from bundle.data.adapted import AdaptedSlices
from bundle.data.export import write_dicom_series
from bundle.data.datalist import read_datalist
from bundle.data.preprocess import AdjacentSlicesd
from bundle.errors import DataError
from bundle.evaluation import surface_metrics
from bundle.networks import ContentOnly, DRLModule, LiverSegmenter, load_drl_weights
from bundle.networks.geometry import from_square, to_square
from conftest import ROOT

SIZES = {"image_size": 64, "dim": 8, "n_res": 2, "mlp_dim": 32, "adaptation": "dadr"}  # the weights fixture is a DADR model
NET = {k: v for k, v in SIZES.items() if k not in ("image_size", "adaptation")}


def dadr(image_size: int, **kwargs) -> LiverSegmenter:
    """The DADR inference network of the test sizes (as inference.yaml composes it)."""
    return LiverSegmenter(image_size, ContentOnly("mr", **NET, shared_res=1), **kwargs)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """drl.pth of an (untrained) DRLModule and the model.pt of an inference network built on it."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(DRLModule(**NET, shared_res=1, image_size=64).state_dict(), folder / "drl.pth")
    network = load_drl_weights(dadr(64), folder / "drl.pth")
    torch.save(network.state_dict(), folder / "model.pt")
    return folder


def test_geometry_round_trip_keeps_size_and_pads_with_background():
    x = torch.linspace(-1, 1, 50 * 70).reshape(1, 1, 50, 70)
    square = to_square(x, 64)
    assert square.shape == (1, 1, 64, 64)
    assert torch.all(square[..., :9, :] == -1) and torch.all(square[..., -9:, :] == -1)  # 50x70 -> 46x64, padded
    back = from_square(square, 50, 70)
    assert back.shape == x.shape and (back - x).abs().mean() < 0.02


def test_network_content_matches_drl_module_and_scripts(weights):
    drl = DRLModule(**NET, shared_res=1, image_size=64)
    drl.load_state_dict(torch.load(weights / "drl.pth", weights_only=True))
    network = load_drl_weights(dadr(64), weights / "drl.pth").eval()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        logits, content = network.segment_with_content(x)
        assert torch.allclose(content, drl.content_only(x, "mr"), atol=1e-5)
        y = torch.rand(3, 1, 40, 72)
        assert network(y).shape == (3, 2, 40, 72)
        assert torch.allclose(torch.jit.script(network)(y), network(y), atol=1e-5)
    network.train()
    assert not network.content_path.training and not any(p.requires_grad for p in network.content_path.parameters())


def test_dual_path_averages_the_probabilities_of_its_two_unets_and_refuses_mismatched_members(weights, tmp_path):
    """inference.yaml --adaptation dual: the joined weights of a content-path model and of a UNet on the
    images give the log of the mean of their probabilities; members of the wrong kind are refused by name."""
    from monai.bundle import ConfigParser

    from bundle.networks import join_dual_path, load_model, recorded_adaptation

    torch.manual_seed(1)
    image = LiverSegmenter(64)
    torch.save(image.state_dict(), tmp_path / "image.pt")
    torch.save(join_dual_path(weights / "model.pt", tmp_path / "image.pt"), tmp_path / "dual.pt")
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs/inference.yaml"))
    parser.update({**SIZES, "adaptation": "dual", "device": "$torch.device('cpu')"})
    dual = load_model(parser.get_parsed_content("network_def"), tmp_path / "dual.pt").eval()  # strict
    content = dadr(64)
    content.load_state_dict(torch.load(weights / "model.pt", weights_only=True))
    x = torch.rand(2, 1, 64, 64) * 2 - 1  # at the trained size: averaged as the members give them (other sizes: before resizing)
    with torch.no_grad():
        mean = (torch.softmax(content.eval()(x), 1) + torch.softmax(image.eval()(x), 1)) / 2
        assert torch.allclose(torch.softmax(dual(x), 1), mean, atol=1e-5)
        assert not torch.allclose(mean, torch.softmax(content(x), 1), atol=1e-3)  # the image path counts
        assert torch.allclose(dual.segment_with_content(x)[1], content.segment_with_content(x)[1])  # DADR's content-only image
        y = torch.rand(3, 1, 40, 72) * 2 - 1
        assert dual(y).shape == (3, 2, 40, 72) and torch.allclose(torch.jit.script(dual)(y), dual(y), atol=1e-5)
    parser.update({"adaptation": "dadr"})
    with pytest.raises(DataError, match=r"dual.pt.*a model with a content path and a UNet on the images \(--adaptation dual\)"):
        load_model(parser.get_parsed_content("network_def", lazy=False), tmp_path / "dual.pt")
    # --adaptation auto (the default) builds whichever network the weights are: the served model needs no flag
    old_style = {k: v for k, v in torch.load(tmp_path / "dual.pt", weights_only=True).items() if k != "paths"}  # saved before paths
    torch.save(old_style, tmp_path / "old_dual.pt")
    for path, expected in ((tmp_path / "dual.pt", "dual"), (tmp_path / "old_dual.pt", "dual"), (weights / "model.pt", "dadr"),
                           (tmp_path / "image.pt", "none")):
        assert recorded_adaptation(path) == expected
        parser.update({"adaptation": "auto", "model_path": str(path)})
        load_model(parser.get_parsed_content("network_def", lazy=False), path)  # a strict load: the network fits the weights
    assert recorded_adaptation(tmp_path / "missing.pt") == "none"  # and load_model names the missing file
    with pytest.raises(DataError, match="image.pt.*is not a single DADR model"):
        join_dual_path(tmp_path / "image.pt", tmp_path / "image.pt")
    with pytest.raises(DataError, match="dual.pt.*is not a single DADR model"):
        join_dual_path(tmp_path / "dual.pt", tmp_path / "image.pt")
    torch.save(LiverSegmenter(64, unet=UNet(2, 1, 2, (8, 16, 32, 64, 128), (2, 2, 2, 2), num_res_units=2)).state_dict(), tmp_path / "small.pt")
    with pytest.raises(DataError, match="small.pt.*has another UNet"):
        join_dual_path(weights / "model.pt", tmp_path / "small.pt")
    with pytest.raises(DataError, match="model.pt.*not a UNet on the images themselves"):
        join_dual_path(weights / "model.pt", weights / "model.pt")
    torch.save(LiverSegmenter(96).state_dict(), tmp_path / "other.pt")
    with pytest.raises(DataError, match="other.pt.*was trained for"):
        join_dual_path(weights / "model.pt", tmp_path / "other.pt")


def test_other_paths_let_a_network_built_once_load_a_model_of_another_composition(weights, tmp_path):
    """MONAI Label builds the served network once and reloads whatever /train publishes: with
    ``other_paths="drop"`` (inference.yaml --adaptation auto) a dual-path or DADR network becomes the
    UNet that replaces it; with ``"take"`` (train.yaml) a UNet starts from a dual path's image UNet
    and a DADR network from its content path; what cannot be done, and ``"refuse"``, raise."""
    from bundle.networks import join_dual_path

    torch.manual_seed(2)
    image = LiverSegmenter(64).eval()
    torch.save(image.state_dict(), tmp_path / "image.pt")
    dual_state = join_dual_path(weights / "model.pt", tmp_path / "image.pt")
    content = dadr(64).eval()
    content.load_state_dict(torch.load(weights / "model.pt", weights_only=True))
    x = torch.rand(2, 1, 64, 64) * 2 - 1

    def image_unet() -> UNet:
        return UNet(2, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)

    for served in (dadr(64, image_unet=image_unet(), other_paths="drop"), dadr(64, other_paths="drop")):
        served.load_state_dict(torch.load(weights / "model.pt", weights_only=True) if served.image_unet is None else dual_state)
        served.load_state_dict(image.state_dict())  # strict: the network is now the UNet on the images
        assert served.paths.tolist() == [0, 0] and served.image_unet is None and not list(served.content_path.parameters())
        with torch.no_grad():
            assert torch.allclose(served.eval()(x), image(x), atol=1e-6)
    with pytest.raises(RuntimeError, match=r"a content path .*other_paths: drop.*restart it"):
        LiverSegmenter(64, other_paths="drop").load_state_dict(dual_state)  # no content path to grow

    unet = LiverSegmenter(64, other_paths="take")
    unet.load_state_dict(dual_state)  # strict: the dual path's image UNet
    taken = dadr(64, other_paths="take")
    taken.load_state_dict(dual_state)  # the content path and its UNet
    with torch.no_grad():
        assert torch.allclose(unet.eval()(x), image(x), atol=1e-6) and unet.paths.tolist() == [0, 0]
        assert torch.allclose(taken.eval()(x), content(x), atol=1e-6) and taken.paths.tolist() == [1, 0]
    with pytest.raises(RuntimeError, match=r"a content path \(--adaptation dadr\), but .*a UNet on the images alone .*other_paths: take"):
        LiverSegmenter(64, other_paths="take").load_state_dict(torch.load(weights / "model.pt", weights_only=True))
    with pytest.raises(RuntimeError, match="other_paths: refuse"):
        dadr(64).load_state_dict(dual_state)
    with pytest.raises(ValueError, match="other_paths"):
        LiverSegmenter(64, other_paths="keep")


def test_drl_weights_of_other_sizes_are_rejected_by_name(weights):
    with pytest.raises(DataError, match="drl.pth.*does not fit"):
        load_drl_weights(LiverSegmenter(64, ContentOnly("mr", dim=16, n_res=2, mlp_dim=32, shared_res=1)), weights / "drl.pth")
    with pytest.raises(DataError, match="missing.pth.*stage 1"):
        load_drl_weights(LiverSegmenter(64, ContentOnly("mr", **NET)), weights / "missing.pth")


def test_joint_domain_slices_hold_both_modalities(phantoms, weights):
    network = load_drl_weights(dadr(64), weights / "drl.pth")
    ct = read_datalist(phantoms / "datalist.json", "source")
    mr = [dict(e, modality="mr") for e in read_datalist(phantoms / "datalist.json", "target_test")]
    ct_only, joint = AdaptedSlices(ct, network), AdaptedSlices(ct + mr, network)
    assert len(joint) > len(ct_only) > 0
    item = joint[len(joint) - 1]
    assert item["image"].shape == item["label"].shape == (1, 64, 64) and item["image"].abs().max() <= 1


def test_adjacent_slices_are_channels_with_the_ends_repeated():
    volume = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    out = AdjacentSlicesd("image", 1)({"image": volume})["image"]
    assert out.shape == (3, 2, 3, 4) and torch.equal(out[1], volume[0])
    assert torch.equal(out[0][..., 1:], volume[0][..., :-1]) and torch.equal(out[0][..., 0], volume[0][..., 0])  # the slice below
    assert torch.equal(out[2][..., :-1], volume[0][..., 1:]) and torch.equal(out[2][..., -1], volume[0][..., -1])  # the slice above
    with pytest.raises(ValueError, match="expected one channel"):
        AdjacentSlicesd("image", 1)({"image": out})


def test_2p5d_content_path_runs_channel_by_channel_and_trains_and_infers(phantoms, weights, tmp_path):
    """With context_slices 1 each adjacent slice gets its own content-only image, the one of the
    slice itself is the 2D network's, and train.yaml + inference.yaml run end to end."""
    unet = UNet(2, 3, 2, (8, 16, 32), (2, 2), num_res_units=1)
    network = load_drl_weights(dadr(64, unet=unet), weights / "drl.pth").eval()
    plain = load_drl_weights(dadr(64), weights / "drl.pth").eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        _, content = network.segment_with_content(x)
        assert torch.allclose(content, plain.segment_with_content(x[:, 1:2])[1], atol=1e-5)
    mr = [dict(e, modality="mr") for e in read_datalist(phantoms / "datalist.json", "target_test")]
    flat, context = AdaptedSlices(mr, plain), AdaptedSlices(mr, network, context_slices=1)
    assert context.images.shape[1] == 3 and torch.allclose(context.images[:, 1:2], flat.images, atol=1e-5)
    assert torch.equal(context.labels, flat.labels)
    sizes = SIZES | {"context_slices": 1, "unet_channels": [8, 16, 32, 64, 128]}
    run_bundle("training", config_file=str(ROOT / "configs/train.yaml"), dataset_dir=str(phantoms), drl_path=str(weights / "drl.pth"),
               ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path), max_epochs=1, amp="bfloat16", **sizes)
    run_bundle("inference", config_file=str(ROOT / "configs/inference.yaml"), dataset_dir=str(phantoms / "mr"),
               output_dir=str(tmp_path / "out"), model_path=str(tmp_path / "models/model.pt"), **sizes)
    for image in (phantoms / "mr").glob("*_image.nii.gz"):
        source = nib.load(image)
        for suffix in ("liver", "content"):
            assert nib.load(tmp_path / "out" / image.name.replace("_image.nii.gz", f"_image_{suffix}.nii.gz")).shape == source.shape


def test_stage2_training_writes_a_model_the_inference_config_loads(phantoms, weights, tmp_path):
    run_bundle("training", config_file=str(ROOT / "configs/train.yaml"), dataset_dir=str(phantoms), drl_path=str(weights / "drl.pth"),
               ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path), max_epochs=2, val_section="target_test", val_interval=1, **SIZES)
    assert (tmp_path / "models/model.pt").is_file() and (tmp_path / "models/model_best.pt").is_file()
    trained = torch.load(tmp_path / "models/model.pt", weights_only=True)
    initial = torch.load(weights / "model.pt", weights_only=True)
    assert all(torch.equal(trained[k], initial[k]) for k in trained if k.startswith("content_path."))
    run_bundle("inference", config_file=str(ROOT / "configs/inference.yaml"), dataset_dir=str(phantoms / "mr"),
               output_dir=str(tmp_path / "out"), model_path=str(tmp_path / "models/model.pt"), **SIZES)
    assert len(list((tmp_path / "out").glob("*_liver.nii.gz"))) == len(list((phantoms / "mr").glob("*_image.nii.gz")))
    # largest_component (default true) keeps one 3D component, a subset of what the UNet marks
    run_bundle("inference", config_file=str(ROOT / "configs/inference.yaml"), dataset_dir=str(phantoms / "mr"), largest_component=False,
               output_dir=str(tmp_path / "all"), model_path=str(tmp_path / "models/model.pt"), **SIZES)
    removed = 0
    for path in (tmp_path / "out").glob("*_liver.nii.gz"):
        kept, marked = (np.asarray(nib.load(folder / path.name).dataobj) > 0 for folder in (tmp_path / "out", tmp_path / "all"))
        assert ndimage.label(kept, structure=np.ones((3, 3, 3)))[1] <= 1 and np.all(marked[kept]), path.name  # 26-connected
        removed += int(marked.sum() - kept.sum())
    assert removed > 0  # a 2-epoch UNet marks islands


def run_inference(dataset_dir, output_dir, model, *extra):
    args = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
            "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir), "--model_path", str(model)]
    args += [a for k, v in SIZES.items() for a in (f"--{k}", str(v))] + list(extra)  # extra last: the last of a repeated option counts
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_inference_writes_every_good_case_on_its_grid_and_names_the_bad_ones(phantoms, weights, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    source = phantoms / "mr/mr_002_t1_pre_image.nii.gz"
    shutil.copy(source, inputs / "case_nifti.nii.gz")
    image = sitk.ReadImage(str(source))
    sitk.WriteImage(image, str(inputs / "case_nrrd.nrrd"))
    write_dicom_series(sitk.Cast(image, sitk.sitkInt16), inputs / "case_dicom", modality="MR")
    nan = sitk.GetArrayFromImage(image).astype(np.float32)
    nan[3, 10, 10] = np.nan
    bad_nan = sitk.GetImageFromArray(nan)
    bad_nan.CopyInformation(image)
    sitk.WriteImage(bad_nan, str(inputs / "bad_nan.nii.gz"))
    sitk.WriteImage(image[:, :, 5], str(inputs / "bad_2d.nii.gz"))
    (inputs / "bad_corrupt.nii.gz").write_bytes(b"not an image")
    sitk.WriteImage(image * 0, str(inputs / "bad_blank.nii.gz"))  # a blank export
    speck = sitk.GetArrayFromImage(image) * 0
    speck[0, :2, :2] = 500  # a few bright voxels in a zero volume: no MR percentile range
    flat = sitk.GetImageFromArray(speck)
    flat.CopyInformation(image)
    sitk.WriteImage(flat, str(inputs / "bad_flat.nii.gz"))
    shutil.copy(phantoms / "mr/mr_002_liver.nii.gz", inputs / "label_2.nii.gz")  # a mask beside its scan, named as one: skipped
    (inputs / "Ground").mkdir()  # CHAOS's folder of PNG masks beside its DICOM series: skipped
    (inputs / "Ground" / "liver_001.png").write_bytes(b"\x89PNG")
    shutil.copy(phantoms / "mr/mr_002_labels.nii.gz", inputs / "bad_labelmap.nii.gz")  # named like a scan: refused by its values
    result = run_inference(inputs, out, weights / "model.pt")
    assert result.returncode != 0
    for bad, problem in [("bad_nan", "NaN"), ("bad_2d", "2D"), ("bad_corrupt", "cannot be read"), ("bad_blank", "in every voxel"),
                         ("bad_flat", "has no contrast: its 0.5-99.5 percentiles are both 0"),
                         ("bad_labelmap", "holds only the values 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11: a label map (a mask)")]:
        assert f"{bad}.nii.gz" in result.stderr and problem in result.stderr, result.stderr[-3000:]
        assert not list(out.glob(f"{bad}*"))
    assert not list(out.glob("label_2*")) and not list(out.glob("Ground*")) and "label_2.nii.gz" not in result.stderr
    assert "Ground" not in result.stderr
    reference = nib.load(source)
    for case in ("case_nifti", "case_nrrd", "case_dicom"):
        mask, content = nib.load(out / f"{case}_liver.nii.gz"), nib.load(out / f"{case}_content.nii.gz")
        assert mask.shape == content.shape == reference.shape, case
        assert mask.get_data_dtype() == np.uint8 and content.get_data_dtype() == np.float32
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        assert np.allclose(mask.affine, reference.affine, atol=1e-3), case
    assert np.array_equal(np.asarray(nib.load(out / "case_nifti_liver.nii.gz").dataobj), np.asarray(nib.load(out / "case_nrrd_liver.nii.gz").dataobj))
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_inference_rejects_unknown_modality_and_unwritable_output(phantoms, weights, tmp_path):
    result = run_inference(phantoms / "mr", tmp_path / "out", weights / "model.pt", "--modality", "pet")
    assert result.returncode != 0 and "modality" in result.stderr and "pet" in result.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = run_inference(phantoms / "mr", blocked / "out", weights / "model.pt")
    assert result.returncode != 0 and str(blocked / "out") in result.stderr


def test_surface_metrics_in_mm():
    label = np.zeros((20, 30, 30), bool)
    label[5:15, 10:20, 10:20] = True
    same = surface_metrics(label, label, (2.0, 1.0, 1.0))
    assert same == {"dice": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0}
    shifted = np.roll(label, 2, axis=0)  # two slices of 2 mm
    metrics = surface_metrics(shifted, label, (2.0, 1.0, 1.0))
    assert metrics["dice"] == pytest.approx(0.8) and metrics["hd95_mm"] == pytest.approx(4.0)
    empty = surface_metrics(np.zeros_like(label), label, (1.0, 1.0, 1.0))
    assert empty["dice"] == 0.0 and np.isnan(empty["hd95_mm"])


def test_ckpt_export_and_verify_net_in_out(weights, tmp_path):
    from monai.bundle import ckpt_export, verify_net_in_out
    from monai.networks.utils import copy_model_state

    overrides = {k: v for k, v in SIZES.items()}
    verify_net_in_out("network_def", meta_file=str(ROOT / "configs/metadata.json"), config_file=str(ROOT / "configs/inference.yaml"),
                      device="cpu", **overrides)
    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(weights / "model.pt"),
                meta_file=str(ROOT / "configs/metadata.json"), config_file=str(ROOT / "configs/inference.yaml"), **overrides)
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    network = dadr(64)
    network.load_state_dict(torch.load(weights / "model.pt", weights_only=True))
    x = torch.rand(2, 1, 48, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(scripted(x), network.eval()(x), atol=1e-5)
    # another --adaptation: the recorded paths say which, in the export and in a non-strict load alike
    wrong = r"a model with a content path \(--adaptation dadr\), but this configuration builds one with a UNet on the images alone"
    with pytest.raises(RuntimeError, match=wrong):
        ckpt_export("network_def", filepath=str(tmp_path / "wrong.ts"), ckpt_file=str(weights / "model.pt"),
                    meta_file=str(ROOT / "configs/metadata.json"), config_file=str(ROOT / "configs/inference.yaml"), **overrides | {"adaptation": "none"})
    assert not (tmp_path / "wrong.ts").exists()
    with pytest.raises(RuntimeError, match=wrong):
        copy_model_state(LiverSegmenter(64), torch.load(weights / "model.pt", weights_only=True))


def test_ship_weights_halves_both_files_all_or_nothing(weights, tmp_path):
    from bundle.shipping import ship_weights

    sizes = ship_weights(weights / "model.pt", weights / "drl.pth", tmp_path / "models")
    for name in ("model.pt", "drl.pth"):
        assert sizes[name] < 0.6 * (weights / name).stat().st_size / 2**20
        assert all(v.dtype != torch.float32 for v in torch.load(tmp_path / "models" / name, weights_only=True).values())
    network = dadr(64)
    network.load_state_dict(torch.load(tmp_path / "models/model.pt", weights_only=True))  # strict, into float32
    original = dadr(64)
    original.load_state_dict(torch.load(weights / "model.pt", weights_only=True))
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(network.eval()(x), original.eval()(x), atol=2e-2)
    with pytest.raises(DataError, match="over the 0.001 MB budget"):
        ship_weights(weights / "model.pt", weights / "drl.pth", tmp_path / "small", max_mb=0.001)
    assert list((tmp_path / "small").iterdir()) == []
    torch.save(LiverSegmenter(64).state_dict(), tmp_path / "image.pt")  # the dual path: model.pt holds both UNets
    ship_weights(weights / "model.pt", weights / "drl.pth", tmp_path / "dual", image_model=tmp_path / "image.pt")
    dual = dadr(64, image_unet=UNet(2, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2))
    dual.load_state_dict(torch.load(tmp_path / "dual/model.pt", weights_only=True))  # strict


def test_shipped_model_fits_the_inference_config():
    """models/model.pt loads strictly into inference.yaml's network as a user runs it: --adaptation
    auto builds the fallback pair the weights record (two UNets on the image; MONAI Label's /train
    starts from the first); models/drl.pth is a whole DRLModule that fits --adaptation dadr."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs/inference.yaml"))
    parser["device"] = "$torch.device('cpu')"
    assert parser.get_parsed_content("built_adaptation") == "fallback"
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(ROOT / "models/model.pt", map_location="cpu", weights_only=True))  # strict
    x = torch.rand(1, 1, parser["image_size"], parser["image_size"]) * 2 - 1
    with torch.no_grad():
        logits, _, paths = network.eval().segment_with_content(x)
        assert torch.allclose(network(x), logits, atol=1e-5)  # forward (training, MONAI Label's /train) runs the first UNet alone
    assert logits.shape == (1, 2, parser["image_size"], parser["image_size"]) and paths.shape == (1, 2, *x.shape[-2:])
    assert not torch.equal(network.unet.state_dict()["model.0.conv.unit0.conv.weight"],
                           network.image_unet.state_dict()["model.0.conv.unit0.conv.weight"])  # two UNets, not one twice
    parser["adaptation"] = "dadr"
    dadr_network = load_drl_weights(parser.get_parsed_content("network_def", instantiate=True, lazy=False), ROOT / "models/drl.pth")
    with torch.no_grad():  # a content-only image, not the input passed through
        content = dadr_network.eval().segment_with_content(x)[1]
    assert content.shape == x.shape and torch.isfinite(content).all() and not torch.allclose(content, x, atol=0.1)
    drl = torch.load(ROOT / "models/drl.pth", map_location="cpu", weights_only=True)
    assert {".".join(k.split(".")[:2]) for k in drl} >= {
        "style_encoders.ct", "style_encoders.mr", "generators.ct", "generators.mr"}  # style transfer too, not the content path alone
    assert sum((ROOT / "models" / name).stat().st_size for name in ("model.pt", "drl.pth")) <= 40 * 2**20


def test_inference_never_overwrites_an_input_and_refuses_clashing_case_names(phantoms, weights, tmp_path):
    source = phantoms / "mr/mr_002_t1_pre_image.nii.gz"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(source, folder / "p1.nii.gz")
    users_mask = folder / "p1_liver.nii.gz"
    shutil.copy(phantoms / "mr/mr_002_liver.nii.gz", users_mask)
    before = users_mask.read_bytes()
    result = run_inference(folder, folder, weights / "model.pt")
    assert result.returncode != 0 and f"{users_mask}: is in the input folder and would be overwritten" in result.stderr
    assert users_mask.read_bytes() == before and not list(folder.glob("*_content.nii.gz"))
    clash = tmp_path / "clash"
    clash.mkdir()
    shutil.copy(source, clash / "a.nii.gz")
    nib.save(nib.load(source), clash / "a.nii")
    result = run_inference(clash, tmp_path / "out", weights / "model.pt")
    assert result.returncode != 0 and "a.nii and a.nii.gz would both be written as a_liver.nii.gz" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before any output folder was made


def test_inference_cli_ends_bad_input_with_one_line_and_exit_code_2(phantoms, weights, tmp_path):
    """Like the preparation scripts: `error: <file>: <problem>` last, exit 2, the traceback in a file;
    an empty sub-folder is skipped; what a killed run left for a case is cleaned when it is written."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "empty_folder").mkdir()
    shutil.copy(phantoms / "mr/mr_002_t1_pre_image.nii.gz", inputs / "good.nii.gz")
    out.mkdir()
    stale = out / ".tmp-0123abcd-good_liver.nii.gz"
    stale.write_bytes(b"half a file")
    result = run_inference(inputs, out, weights / "model.pt")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "empty_folder: empty folder, skipped" in result.stdout + result.stderr and not stale.exists() and (out / "good_liver.nii.gz").is_file()
    (inputs / "bad.nii.gz").write_bytes(b"not an image")
    result = run_inference(inputs, tmp_path / "out2", weights / "model.pt")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith(f"error: {inputs}: 1 of 2 cases failed: {inputs / 'bad.nii.gz'}: cannot be read"), last
    log = last.rsplit("(traceback: ", 1)[1].rstrip(")")
    assert "Traceback" in open(log).read()
    for extra, problem in ((["--device", "cuda:0"], "error: --device: cuda:0 was asked for, but CUDA is not available"),
                           (["--amp", "float16"], "error: --amp: must be one of None, bfloat16, got 'float16'"),
                           (["--adaptation", "cyclegan"], "error: --adaptation: must be one of auto, none, dadr, dual, fallback, got 'cyclegan'")):
        if extra[0] == "--device" and torch.cuda.is_available():
            continue
        result = run_inference(inputs, tmp_path / "out3", weights / "model.pt", *extra)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(problem), result.stderr[-1000:]


def test_weights_refuse_another_image_size_or_intensity_setting_and_non_finite_values(phantoms, weights, tmp_path):
    """Fully convolutional weights would run at any size; the sizes they were trained for travel with them."""
    folder = phantoms / "mr"
    args = [a for k, v in SIZES.items() if k != "image_size" for a in (f"--{k}", str(v))]

    def infer(model, *extra):
        command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml", "--dataset_dir", str(folder),
                   "--output_dir", str(tmp_path / "out"), "--model_path", str(model), *args, *extra]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    result = infer(weights / "model.pt", "--image_size", "128")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith(f"error: {weights / 'model.pt'}: does not fit this configuration"), last
    assert "trained for image_size 64" in last and "has image_size 128" in last
    result = infer(weights / "model.pt", "--image_size", "64", "--ct_window", "[-250,350]")
    assert result.returncode == 2 and "ct_window [-125, 275]" in result.stderr.strip().splitlines()[-1]
    with pytest.raises(DataError, match="drl.pth: was trained for image_size 64.*this configuration has image_size 96"):
        load_drl_weights(dadr(96), weights / "drl.pth")
    state = torch.load(weights / "model.pt", weights_only=True)
    next(v for k, v in state.items() if k.startswith("unet.")).view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    result = infer(tmp_path / "nan.pt", "--image_size", "64")
    assert result.returncode == 2 and f"error: {tmp_path / 'nan.pt'}: has non-finite (NaN/Inf) weights" in result.stderr
    assert not list((tmp_path / "out").glob("*_liver.nii.gz")) if (tmp_path / "out").exists() else True


def test_multi_organ_training_still_writes_a_liver_mask(phantoms, tmp_path):
    """--organs in preparation writes the organ map; a UNet trained on it (5 classes, validated on
    it) gives inference a liver-only 0/1 mask; entries without an organ map are named."""
    from bundle.data.prepare import make_datalist, prepare_case

    for kind, subject, image in (("ct", "ct_000", "ct_000_image"), ("ct", "ct_001", "ct_001_image"), ("mr", "mr_002", "mr_002_t2_image")):
        summary = prepare_case(phantoms / kind / f"{image}.nii.gz", phantoms / kind / f"{subject}_labels.nii.gz", tmp_path / kind, subject,
                               liver_label=1, organs="right_kidney=3,left_kidney=4,spleen=2")
        organs = np.asarray(nib.load(tmp_path / kind / f"{subject}_organs.nii.gz").dataobj)
        liver = np.asarray(nib.load(tmp_path / kind / f"{subject}_liver.nii.gz").dataobj)
        assert set(np.unique(organs)) == {0, 1, 2, 3, 4} and np.array_equal(organs == 1, liver == 1), summary
    datalist = make_datalist(tmp_path / "ct", tmp_path / "mr", tmp_path / "datalist.json", tmp_path / "mr")
    assert all("organs" in e for e in datalist["source"] + datalist["target_test"])
    slices = AdaptedSlices(read_datalist(tmp_path / "datalist.json", "source"), LiverSegmenter(64), label_key="organs")
    assert set(slices.labels.unique().tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}
    with pytest.raises(DataError, match="has no 'organs' label map"):
        AdaptedSlices(read_datalist(phantoms / "datalist.json", "source"), LiverSegmenter(64), label_key="organs")
    sizes = {"image_size": 64, "out_channels": 5, "unet_channels": [8, 16, 32, 64, 128], "adaptation": "none"}
    run_bundle("training", config_file=str(ROOT / "configs/train.yaml"), dataset_dir=str(tmp_path), ckpt_dir=str(tmp_path / "models"),
               output_dir=str(tmp_path / "run"), max_epochs=2, label_key="organs", val_section="target_test", val_interval=1, **sizes)
    run_bundle("inference", config_file=str(ROOT / "configs/inference.yaml"), dataset_dir=str(tmp_path / "mr"), modality="mr",
               output_dir=str(tmp_path / "out"), model_path=str(tmp_path / "models/model.pt"), **sizes)
    mask = np.asarray(nib.load(tmp_path / "out/mr_002_image_liver.nii.gz").dataobj)
    assert set(np.unique(mask)) <= {0, 1}


def test_ensemble_averages_the_contrast_variants_probabilities_and_measures_their_entropy():
    """Exact mean of the variants' softmax, the gamma-1 content output, and an entropy that is 0
    where every variant is certain and ln 2 where two classes split evenly."""
    from monai.inferers import SliceInferer

    from bundle.inferers import EnsembleInferer

    torch.manual_seed(0)
    weight = torch.randn(2, 1, 6, 5)

    def network(x):  # (N, 1, 6, 5) slices -> (logits, content)
        return x * weight, x + 1

    volume = torch.rand(1, 1, 6, 5, 3) * 2 - 1
    slices = SliceInferer(roi_size=(-1, -1), spatial_dim=2)
    log_mean, content, entropy = EnsembleInferer(slices, gammas=(0.5, 1.0, 2.0))(volume, network)
    expected = sum(torch.softmax(slices(2 * ((volume + 1) / 2) ** g - 1, network)[0], 1) for g in (0.5, 1.0, 2.0)) / 3
    assert torch.allclose(torch.softmax(log_mean, 1), expected, atol=1e-6)
    assert torch.equal(content, volume + 1)
    assert entropy.shape == (1, 1, 6, 5, 3)
    assert torch.allclose(entropy, -(expected * expected.log()).sum(1, keepdim=True), atol=1e-5)
    certain = EnsembleInferer(slices)(volume, lambda x: (torch.cat([x * 0 + 50, x * 0 - 50], 1), x))[-1]
    split = EnsembleInferer(slices)(volume, lambda x: (torch.cat([x * 0, x * 0], 1), x))[-1]
    assert certain.abs().max() < 1e-6 and torch.allclose(split, torch.full_like(split, np.log(2)))
    with pytest.raises(ValueError, match="gammas"):
        EnsembleInferer(slices, gammas=(0.5, 2.0))


def test_style_ensemble_averages_content_only_images_decoded_under_sampled_ct_styles(weights):
    """``styled`` decodes with the given CT style and restores zero; the ensemble averages the
    neutral pass and each style's pass, keeps the neutral content-only image, and is refused
    for a network without a content path."""
    from monai.inferers import SliceInferer

    from bundle.inferers import EnsembleInferer

    network = dadr(64)
    network.load_state_dict(torch.load(weights / "model.pt", weights_only=True))
    network.eval()
    path, x = network.content_path, torch.rand(3, 1, 64, 64) * 2 - 1
    style = torch.randn(path.style_dim)
    with torch.no_grad():
        code = path.content_encoders["mr"](x)
        neutral = path(x)
        with path.styled(style):
            styled = path(x)
        assert torch.allclose(neutral, path.generators["ct"](code, torch.zeros(3, path.style_dim)), atol=1e-6)
        assert torch.allclose(styled, path.generators["ct"](code, style.expand(3, -1)), atol=1e-6)
        assert not torch.allclose(styled, neutral, atol=1e-3) and torch.equal(path.style, torch.zeros(path.style_dim))
        assert torch.equal(path(x), neutral)

        volume = torch.rand(1, 1, 40, 50, 3) * 2 - 1
        slices = SliceInferer(roi_size=(-1, -1), spatial_dim=2)
        ensemble = EnsembleInferer(slices, gammas=(1.0,), styles=2, content_path=path, seed=0)
        log_mean, content, entropy = ensemble(volume, network.segment_with_content)
        passes = [slices(volume, network.segment_with_content)]
        for code_k in ensemble.styles:
            with path.styled(code_k):
                passes.append(slices(volume, network.segment_with_content))
    expected = sum(torch.softmax(logits, 1) for logits, _ in passes) / 3
    assert len(ensemble.styles) == 2 and not torch.allclose(ensemble.styles[0], ensemble.styles[1])
    assert torch.allclose(torch.softmax(log_mean, 1), expected, atol=1e-5)
    assert not torch.allclose(expected, torch.softmax(passes[0][0], 1), atol=1e-4)  # the styles change the prediction
    assert torch.equal(content, passes[0][1]) and entropy.shape == (1, 1, 40, 50, 3) and entropy.max() > 0
    assert torch.equal(path.style, torch.zeros(path.style_dim))
    served = copy.deepcopy(network)  # MONAI Label runs a copy of the network the config built: its own path is styled
    with torch.no_grad():
        assert torch.allclose(ensemble(volume, served)[0], log_mean, atol=1e-5)
    with pytest.raises(ValueError, match="content path"):
        EnsembleInferer(slices, styles=2, content_path=None)
    with pytest.raises(ValueError, match="shape"):
        path.styled(torch.zeros(path.style_dim + 1)).__enter__()


@pytest.mark.parametrize("styles", [0, 2])
def test_uncertainty_option_writes_the_entropy_on_the_input_grid_and_scores_it(phantoms, weights, tmp_path, styles):
    """The contrast ensemble, and with ``--ensemble_styles`` also sampled CT styles (DADR)."""
    out = tmp_path / "eval"
    run_bundle("evaluating", config_file=[str(ROOT / "configs/inference.yaml"), str(ROOT / "configs/evaluate.yaml")],
               datalist=str(phantoms / "datalist.json"), model_path=str(weights / "model.pt"), output_dir=str(out), uncertainty=True,
               ensemble_styles=styles, **SIZES)
    entries = read_datalist(phantoms / "datalist.json", "target_test")
    for entry in entries:
        source = nib.load(entry["image"])
        name = os.path.basename(entry["image"]).replace(".nii.gz", "")
        uncertainty = nib.load(out / f"{name}_uncertainty.nii.gz")
        assert uncertainty.shape == source.shape and np.allclose(uncertainty.affine, source.affine, atol=1e-3)
        values = np.asarray(uncertainty.dataobj)
        assert uncertainty.get_data_dtype() == np.float32 and values.min() >= -1e-4 and values.max() <= np.log(2) + 1e-3 and values.max() > 0
    rows = json.loads((out / "metrics.json").read_text())["subjects"]
    assert len(rows) == len(entries) and all(r["uncertainty"] > 0 for r in rows)
    assert "uncertainty" in (out / "metrics.csv").read_text().splitlines()[0]


def test_torchrun_splits_the_cases_between_ranks_and_reports_once(phantoms, weights, tmp_path):
    """2 ranks (gloo) with reading/writing threads: every case once, masks equal to a single
    process's voxel for voxel, the bad case and the summary reported as often as by one process."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted((phantoms / "mr").glob("*_image.nii.gz"))[:4]:
        shutil.copy(path, inputs / path.name)
    (inputs / "bad_corrupt.nii.gz").write_bytes(b"not an image")
    single = run_inference(inputs, tmp_path / "single", weights / "model.pt")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "inference",
            "--config_file", "configs/inference.yaml", "--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "ranks"),
            "--model_path", str(weights / "model.pt"), "--num_workers", "2", *[a for k, v in SIZES.items() for a in (f"--{k}", str(v))]]
    ranks = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode != 0 and ranks.returncode != 0
    single_log, ranks_log = single.stdout + single.stderr, ranks.stdout + ranks.stderr
    assert "[rank1]: Traceback" not in ranks_log, ranks_log[-3000:]  # rank 0 alone reports the failure; rank 1 leaves without an error of its own
    for text in ("bad_corrupt.nii.gz: cannot be read", "1 of 5 cases failed", "4 of 5 cases segmented"):
        assert ranks_log.count(text) == single_log.count(text) >= 1, (text, ranks_log[-3000:])
    outputs = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert outputs == sorted(p.name for p in (tmp_path / "ranks").iterdir()) and len(outputs) == 10 and {'summary.csv', 'report.html'} <= set(outputs)
    for name in outputs:
        if name.endswith("_liver.nii.gz"):
            a, b = (np.asarray(nib.load(tmp_path / run / name).dataobj) for run in ("single", "ranks"))
            assert np.array_equal(a, b), name


def test_bfloat16_inference_resizes_slices_of_any_size(phantoms, weights, tmp_path):
    """--amp bfloat16 on a scan whose slices are not the training size (resizing has no bfloat16
    kernel): outputs on the input grid, the content-only image close to float32's."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = nib.load(phantoms / "mr/mr_002_t1_pre_image.nii.gz")
    wide = np.pad(np.asarray(source.dataobj, dtype=np.float32), ((8, 8), (3, 3), (0, 0)), mode="edge")  # 80 x 70 slices
    nib.save(nib.Nifti1Image(wide, source.affine), str(inputs / "wide.nii.gz"))
    for amp in (None, "bfloat16"):
        run_bundle("inference", config_file=str(ROOT / "configs/inference.yaml"), dataset_dir=str(inputs), amp=amp,
                   output_dir=str(tmp_path / str(amp)), model_path=str(weights / "model.pt"), **SIZES)
    full, half = (np.asarray(nib.load(tmp_path / run / "wide_content.nii.gz").dataobj) for run in ("None", "bfloat16"))
    assert full.shape == half.shape == wide.shape and np.abs(full - half).mean() < 0.05


def test_inference_writes_the_quality_summary_the_report_and_a_warning_per_flagged_case(phantoms, weights, tmp_path):
    """Every run: summary.csv (one row per case, every number) and report.html beside the masks; a case
    outside the configured bounds gets one WARNING line naming it and why, and the run still exits 0."""
    out = tmp_path / "out"
    result = run_inference(phantoms / "mr", out, weights / "model.pt", "--quality", "{'liver_ml': [0, 1e-6], 'fov_cut': 'none'}")
    assert result.returncode == 0, result.stderr[-2000:]
    cases = sorted(p.name[: -len("_liver.nii.gz")] for p in out.glob("*_liver.nii.gz"))
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case"] for r in rows) == cases and all(r["liver_ml"] != "" and r["confidence"] != "" for r in rows)
    flagged = [r["case"] for r in rows if r["flagged"] == "True"]
    assert flagged and all(r["flags"].startswith("implausible_volume") for r in rows if r["flagged"] == "True")
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if " - WARNING - " in line and "check this mask" in line]
    assert sorted(w.split("bundle.inference - WARNING - ")[1].split(":")[0] for w in warnings) == sorted(flagged)
    page = (out / "report.html").read_text()
    assert page.count("class='case") == len(cases) and page.count("data:image/jpeg;base64,") == 2 * len(cases)
    quiet = run_inference(phantoms / "mr", tmp_path / "quiet", weights / "model.pt", "--report", "false")
    assert quiet.returncode == 0 and (tmp_path / "quiet" / "summary.csv").is_file() and not (tmp_path / "quiet" / "report.html").exists()


def _unet_model(path, seed: int) -> None:
    """A UNet on the images (random weights) of the test sizes, saved as a stage-2 model."""
    torch.manual_seed(seed)
    torch.save(LiverSegmenter(64, None, UNet(2, 1, 2, (8, 16, 32, 64, 128), (2, 2, 2, 2), num_res_units=2)).state_dict(), path)


def test_fallback_pair_gives_the_first_unets_mask_unless_its_quality_checks_fail(phantoms, tmp_path):
    """--adaptation fallback (auto reads it from the joined weights): the first UNet segments; where its mask is
    flagged as failed the mask is the second UNet's, and the case says so; MONAI Label's /train takes the first."""
    from bundle.networks import join_fallback, recorded_adaptation
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    _unet_model(first, 0)
    _unet_model(second, 1)
    torch.save(join_fallback(first, second), tmp_path / "pair.pt")
    assert recorded_adaptation(tmp_path / "pair.pt") == "fallback"
    with pytest.raises(DataError, match="not a single UNet on the images"):
        join_fallback(tmp_path / "pair.pt", second)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(phantoms / "mr/mr_000_t1_pre_image.nii.gz", folder)
    masks = {}
    for name, model, liver_ml in (("first", first, [0, 1e9]), ("second", second, [0, 1e9]), ("pair_kept", tmp_path / "pair.pt", [0, 1e9]),
                                  ("pair_fell_back", tmp_path / "pair.pt", [1e8, 1e9])):
        run_bundle("inference", config_file=str(ROOT / "configs/inference.yaml"), bundle_root=str(ROOT), dataset_dir=str(folder),
                   output_dir=str(tmp_path / name), model_path=str(model), quality={"liver_ml": liver_ml}, unet_channels=[8, 16, 32, 64, 128],
                   image_size=64)  # in-process: the CLI's own path is tested above
        masks[name] = np.asarray(nib.load(tmp_path / name / "mr_000_t1_pre_image_liver.nii.gz").dataobj)
        with open(tmp_path / name / "summary.csv") as f:
            masks[name + "_row"] = next(csv.DictReader(f))
    assert np.array_equal(masks["pair_kept"], masks["first"]) and masks["pair_kept_row"]["fallback"] == "False"
    assert np.array_equal(masks["pair_fell_back"], masks["second"]) and masks["pair_fell_back_row"]["fallback"] == "True"
    assert "fallback: the first UNet's mask failed (implausible_volume" in masks["pair_fell_back_row"]["flags"]
    assert masks["pair_kept_row"]["paths_dice"] != ""  # the two UNets' agreement is a quality number of the pair
    taker = LiverSegmenter(64, None, UNet(2, 1, 2, (8, 16, 32, 64, 128), (2, 2, 2, 2), num_res_units=2), other_paths="take")
    taker.load_state_dict(torch.load(tmp_path / "pair.pt", weights_only=True))
    assert all(torch.equal(v, torch.load(first, weights_only=True)["unet." + k]) for k, v in taker.unet.state_dict().items())
