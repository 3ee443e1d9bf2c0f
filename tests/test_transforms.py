"""Appearance randomisation (GIN) and the autocast inferer of stage 2."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from bundle.inferers import AutocastInferer
from bundle.transforms import RandGlobalIntensityNonlineard


def _slice() -> dict[str, torch.Tensor]:
    y, x = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    image = torch.where(x**2 + y**2 < 0.5, 0.3, -1.0) + 0.5 * (x > 0.2) * (x**2 + y**2 < 0.5)
    return {"image": image[None], "label": (x**2 + y**2 < 0.5).float()[None]}


def test_gin_changes_intensities_not_shapes_or_range():
    item = _slice()
    gin = RandGlobalIntensityNonlineard("image", prob=1.0).set_random_state(0)
    outputs = [gin(item) for _ in range(4)]
    for out in outputs:
        assert out["image"].shape == item["image"].shape and torch.equal(out["label"], item["label"])
        assert torch.isclose(out["image"].min(), item["image"].min()) and torch.isclose(out["image"].max(), item["image"].max())
        assert not torch.allclose(out["image"], item["image"], atol=1e-3)
    assert not torch.allclose(outputs[0]["image"], outputs[1]["image"])  # a new network each call
    again = RandGlobalIntensityNonlineard("image", prob=1.0).set_random_state(0)(item)
    assert torch.equal(again["image"], outputs[0]["image"])  # reproducible from its seed


def test_gin_with_probability_zero_is_the_identity_and_bad_sizes_are_refused():
    item = _slice()
    assert torch.equal(RandGlobalIntensityNonlineard("image", prob=0.0)(item)["image"], item["image"])
    with pytest.raises(ValueError, match="kernel_sizes odd"):
        RandGlobalIntensityNonlineard("image", kernel_sizes=(2,))


def test_autocast_inferer_returns_float32_close_to_full_precision():
    torch.manual_seed(0)
    net = UNet(2, 1, 2, (8, 16, 32), (2, 2), num_res_units=1).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        full, mixed = AutocastInferer()(x, net), AutocastInferer("bfloat16")(x, net)
    assert mixed.dtype == torch.float32 and mixed.shape == full.shape
    assert (mixed - full).abs().max() < 0.1 * full.abs().max()
    with pytest.raises(ValueError, match="amp must be 'bfloat16' or None"):
        AutocastInferer("float16")


def test_argmax_step_equals_monais_asdiscrete_ties_and_metadata_included():
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted
    from bundle.transforms import ArgMaxd
    for channels in (2, 5):
        x = MetaTensor(torch.rand(channels, 24, 20, 6), affine=torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0])))
        x[:, :3] = 0.5  # ties: the first class wins in both
        ours, theirs = ArgMaxd("pred")({"pred": x})["pred"], AsDiscreted("pred", argmax=True)({"pred": x})["pred"]
        assert torch.equal(ours, theirs) and torch.equal(ours.affine, x.affine) and ours.shape == (1, 24, 20, 6)
