"""The contrast-agnostic source (bundle/synthesis.py): random intensity per tissue, labels untouched."""

from __future__ import annotations

import json

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigParser

from bundle.data.adapted import AdaptedSlices
from bundle.data.datalist import read_datalist
from bundle.data.prepare import prepare_case, make_datalist
from bundle.synthesis import BODY_CLASS, RandTissueSynthesisd, tissue_classes
from conftest import ROOT

LIVER, SPLEEN = 6, 1  # SABS ids


def _ct_slice() -> dict[str, torch.Tensor]:
    """A body of fat and soft tissue (by CT value) with a liver and a spleen (by label) in air."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    body = x**2 + y**2 < 0.8
    fat = body & (x**2 + y**2 > 0.6)
    hu = torch.full((64, 64), -1000.0)
    hu[body] = 40.0
    hu[fat] = -90.0
    tissues = torch.zeros(64, 64, dtype=torch.uint8)
    tissues[(x + 0.3) ** 2 + y**2 < 0.1] = LIVER
    tissues[(x - 0.4) ** 2 + y**2 < 0.04] = SPLEEN
    hu[tissues == LIVER] = 100.0
    hu[(tissues == LIVER) & ((x + 0.3).abs() < 0.04)] = 160.0  # a bright vessel across the liver
    hu[tissues == SPLEEN] = 120.0
    image = ((hu.clamp(-125, 275) + 125) / 400 * 2 - 1)[None]
    return {"image": image, "label": (tissues == LIVER).float()[None], "tissues": tissues[None]}


def test_tissue_classes_keep_organ_labels_and_bin_the_rest_by_hu():
    item = _ct_slice()
    classes = tissue_classes(item["image"], item["tissues"])
    assert torch.equal(classes[item["tissues"] > 0], item["tissues"][item["tissues"] > 0].long())
    assert set(torch.unique(classes[item["tissues"] == 0]).tolist()) == {BODY_CLASS, BODY_CLASS + 1, BODY_CLASS + 2}  # air, fat, soft


def test_synthesis_changes_each_class_intensity_not_the_labels():
    item = _ct_slice()
    synth = RandTissueSynthesisd(prob=1.0, blur_sigma=(0, 0), zoom_range=(1, 1), bias_coeff=(0, 0), noise_std=(0, 0), std_range=(0, 0),
                                 texture_range=(0, 0)).set_random_state(0)
    liver, spleen = item["tissues"] == LIVER, item["tissues"] == SPLEEN
    body = (item["tissues"] == 0) & (item["image"] > -0.9)
    darkest = brightest = 0
    for _ in range(40):
        out = synth(dict(item))
        assert "tissues" not in out and torch.equal(out["label"], item["label"]) and out["image"].shape == item["image"].shape
        assert out["image"].min() >= -1 and out["image"].max() <= 1
        image = out["image"]
        assert image[liver].std() < 1e-4  # one Gaussian of no spread and no texture: one value per class
        neighbours = torch.stack([image[spleen].mean(), image[body & (item["image"] < -0.8)].mean(), image[body & (item["image"] > -0.5)].mean()])
        darkest += int(image[liver].mean() < neighbours.min())
        brightest += int(image[liver].mean() > neighbours.max())
    assert darkest >= 3 and brightest >= 3  # the liver is free to be the darkest or the brightest tissue


def test_the_liver_can_be_made_the_darkest_or_the_brightest_tissue():
    item = _ct_slice()
    synth = RandTissueSynthesisd(prob=1.0, liver_extreme_prob=1.0, dark_background_prob=0.0, blur_sigma=(0, 0), zoom_range=(1, 1),
                                 bias_coeff=(0, 0), noise_std=(0, 0), std_range=(0, 0), texture_range=(0, 0)).set_random_state(2)
    liver = item["tissues"] == LIVER
    sides = []
    for _ in range(20):
        image = synth(dict(item))["image"]
        others = [image[item["tissues"] == SPLEEN].mean(), image[(item["tissues"] == 0) & (item["image"] < -0.95)].mean(),
                  image[(item["tissues"] == 0) & (item["image"] > -0.5)].mean()]
        darkest, brightest = bool(image[liver].mean() <= min(others) + 0.25), bool(image[liver].mean() >= max(others) - 0.25)
        assert darkest or brightest  # every time: about as dark as the darkest tissue (give or take 0.1 before scaling), or the brightest
        sides.append(darkest)
    assert 0 < sum(sides) < len(sides)  # both, at random


def test_synthesis_keeps_the_ct_texture_when_asked_and_passes_mr_items_unchanged():
    item = _ct_slice()
    synth = RandTissueSynthesisd(prob=1.0, blur_sigma=(0, 0), zoom_range=(1, 1), bias_coeff=(0, 0), noise_std=(0, 0), std_range=(0, 0),
                                 texture_range=(1, 1)).set_random_state(1)
    liver = (item["tissues"] == LIVER)[0]
    out = synth(dict(item))["image"][0]
    assert out[liver].std() > 0.01  # the vessel inside the liver is still there
    mr = {"image": item["image"], "label": item["label"]}
    assert synth(mr)["image"] is item["image"]
    never = RandTissueSynthesisd(prob=0.0)(dict(item))
    assert "tissues" not in never and torch.equal(never["image"], item["image"])
    with pytest.raises(ValueError, match="one-channel"):
        synth({**item, "image": item["image"].repeat(3, 1, 1)})


def test_synthesis_is_reproducible_from_its_seed():
    item = _ct_slice()
    a = RandTissueSynthesisd(prob=1.0).set_random_state(5)(dict(item))["image"]
    b = RandTissueSynthesisd(prob=1.0).set_random_state(5)(dict(item))["image"]
    assert torch.equal(a, b)


def dataset_entries(phantoms) -> list[dict]:
    return read_datalist(phantoms / "datalist.json", "source")


def test_training_on_the_synthetic_source_reads_each_ct_slices_label_map(phantoms, tmp_path):
    """train.yaml --synthesis True: every CT slice carries its label map (the phantoms' liver is 1 there),
    aligned with its liver mask; the augmentation re-renders and drops it; MR entries have none."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.yaml"))
    parser.update({"dataset_dir": str(phantoms), "output_dir": str(tmp_path / "seg"), "image_size": 64, "synthesis": True, "max_epochs": 1,
                   "unet_channels": [8, 16, 32, 64, 128]})
    dataset = parser.get_parsed_content("train#dataset")
    assert dataset.tissues is not None and len(dataset.tissues) == len(dataset.images)
    assert torch.equal((dataset.tissues == 1).float(), dataset.labels)
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    assert set(batch) == {"image", "label"}
    parser.get_parsed_content("train#trainer").run()
    assert (tmp_path / "seg" / "model.pt").is_file()
    with pytest.raises(ValueError, match="adaptation none"):  # a translated (DACGAN) or content-only slice has no CT values to classify
        AdaptedSlices(dataset_entries(phantoms), parser.get_parsed_content("network"), translator=torch.nn.Identity(), tissue_key="labels")


def test_prepare_keeps_the_whole_label_map_and_the_datalist_lists_it(phantoms, tmp_path):
    entry = json.loads((phantoms / "datalist.json").read_text())["source"][0]
    summary = prepare_case(phantoms / entry["image"], phantoms / entry["labels"], tmp_path / "ct", "case", liver_label=1, label_map=True)
    assert summary["side"] == "right"
    original = nib.load(phantoms / entry["labels"]).get_fdata()
    kept = nib.load(tmp_path / "ct" / "case_labels.nii.gz").get_fdata()
    assert kept.shape == original.shape and set(map(int, set(kept.ravel()))) == set(map(int, set(original.ravel())))
    datalist = make_datalist(tmp_path / "ct", tmp_path / "ct", tmp_path / "datalist.json")
    assert datalist["source"][0]["labels"] == "ct/case_labels.nii.gz"
