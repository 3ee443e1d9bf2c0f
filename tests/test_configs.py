"""What a MONAI user types on the command line reaches the configs as meant."""

from __future__ import annotations

import json
import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigParser

CONFIGS = ROOT / "configs"


def parsed(config: str, id: str, **overrides):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update(overrides)
    return parser.get_parsed_content(id)


@pytest.mark.parametrize("spelling", [False, "false", "False", "FALSE", "0", "no"])
def test_boolean_overrides_read_false_in_any_spelling(spelling):
    """fire hands `--largest_component false` to the config as the string 'false', which is true in Python."""
    steps = parsed("inference.yaml", "postprocessing", largest_component=spelling).transforms
    keep = next(t for t in steps if type(t).__name__ == "KeepLargestComponentd")
    assert keep.enabled is False
    augmentation = parsed("train.yaml", "train#augmentation", appearance_randomisation=spelling, synthesis=spelling)
    assert not any(type(t).__name__ in ("RandGlobalIntensityNonlineard", "RandTissueSynthesisd") for t in augmentation.transforms)
    assert parsed("train.yaml", "train#dataset#tissue_key", synthesis=spelling) is None
    assert parsed("drl_train.yaml", "memory_format", channels_last=spelling, device=torch.device("cpu")) == torch.contiguous_format


@pytest.mark.parametrize("spelling", [True, "true", "True", "1"])
def test_boolean_overrides_read_true_in_any_spelling(spelling):
    steps = parsed("inference.yaml", "postprocessing", largest_component=spelling).transforms
    keep = next(t for t in steps if type(t).__name__ == "KeepLargestComponentd")
    assert keep.enabled is True
    augmentation = parsed("train.yaml", "train#augmentation", appearance_randomisation=spelling, synthesis=spelling)
    names = [type(t).__name__ for t in augmentation.transforms]
    assert "RandGlobalIntensityNonlineard" in names and names[0] == "RandTissueSynthesisd"  # first: it consumes the label map
    assert parsed("train.yaml", "train#dataset#tissue_key", synthesis=spelling) == "labels"


def test_a_boolean_override_that_is_not_one_fails_clearly():
    with pytest.raises(Exception) as raised:
        parsed("inference.yaml", "postprocessing", largest_component="maybe")
    causes, error = [], raised.value
    while error is not None:
        causes.append(str(error))
        error = error.__cause__
    assert "--largest_component must be True or False, got 'maybe'" in causes


def test_network_and_preprocessing_sizes_are_the_same_in_every_config():
    """MONAI Label reads train.yaml and inference.yaml on their own, so the size block is copied: it must not drift."""
    shared = ["image_size", "dim", "n_down", "n_res", "style_dim", "mlp_dim", "norm", "shared_res", "ct_window", "mr_percentiles"]
    configs = {}
    for name in ("drl_train.yaml", "train.yaml", "inference.yaml"):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / name))
        configs[name] = parser
    for key in shared:
        values = {name: p[key] for name, p in configs.items()}
        assert len({str(v) for v in values.values()}) == 1, (key, values)
    for key in ("unet_channels", "context_slices", "out_channels"):
        assert configs["train.yaml"][key] == configs["inference.yaml"][key], key


@pytest.mark.parametrize("configs,ids", [
    (["drl_train.yaml"], ["network", "discriminators", "memory_format", "train#checkpoint"]),
    (["drl_train.yaml", "cyclegan_train.yaml"], ["network", "discriminators", "train#checkpoint"]),
    (["train.yaml"], ["network_def", "train#inferer"]),
    (["inference.yaml"], ["network", "preprocessing", "postprocessing"]),
])
def test_device_given_as_a_plain_string_works_in_every_config(configs, ids, tmp_path):
    """`--device cpu` reaches the config as the string 'cpu' (not a torch.device)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({"device": "cpu", "output_dir": str(tmp_path), "ckpt_dir": str(tmp_path), "adaptation": "none"})
    for id in ids:
        assert parser.get_parsed_content(id) is not None, id
    from bundle.cli import check_device
    assert check_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("modality,volume", [("mr", "mr/mr_002_t2_image.nii.gz"), ("ct", "ct/ct_000_image.nii.gz")])
@pytest.mark.parametrize("context", [0, 1])
def test_inference_yaml_preprocessing_is_the_training_preprocessing(phantoms, modality, volume, context):
    """inference.yaml spells its preprocessing out for readers; training builds it in Python
    (bundle/data/preprocess.py). They must give the same volume, metadata included."""
    from bundle.data.preprocess import volume_transform

    listed = parsed("inference.yaml", "preprocessing", modality=modality, context_slices=context)
    ours = volume_transform(modality, track_meta=True, context_slices=context)
    a, b = listed({"image": str(phantoms / volume)})["image"], ours({"image": str(phantoms / volume)})["image"]
    assert a.shape == b.shape and torch.equal(a.as_tensor(), b.as_tensor())
    assert torch.equal(torch.as_tensor(a.affine), torch.as_tensor(b.affine))
    assert [op["class"] for op in a.applied_operations] == [op["class"] for op in b.applied_operations]


def test_joint_training_counts_each_joint_volume_joint_repeat_times(phantoms):
    """Self-training weighs a few pseudo-labelled MR against many CT by listing each MR volume
    ``joint_repeat`` times (train.yaml); without --joint no MR enters."""
    datalist = str(phantoms / "datalist.json")
    n_ct, n_mr = (len(json.loads((phantoms / "datalist.json").read_text())[s]) for s in ("source", "target_labelled"))
    assert len(parsed("train.yaml", "train#data", datalist=datalist)) == n_ct
    for repeat in (1, 3):
        data = parsed("train.yaml", "train#data", datalist=datalist, joint=True, joint_repeat=repeat)
        assert len(data) == n_ct + repeat * n_mr and sum(e.get("modality") == "mr" for e in data) == repeat * n_mr
