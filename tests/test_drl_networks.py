"""Stage-1 networks and losses: shapes, the content/style split, eq. 1-4, TorchScript."""

from __future__ import annotations

import pytest
import torch

from bundle.losses import AdversarialLoss, DRLLoss, latent_loss, recon_loss
from bundle.networks import ContentEncoder, DRLModule, MultiScaleDiscriminator, StyleEncoder


@pytest.mark.parametrize("size,dim,n_down,norm", [(64, 8, 2, "instance"), (96, 4, 3, "batch"), (128, 8, 2, "instance")])
def test_shapes_follow_the_config(size, dim, n_down, norm):
    drl = DRLModule(dim=dim, n_down=n_down, n_res=2, style_dim=5, mlp_dim=16, norm=norm)
    x = torch.randn(2, 1, size, size)
    content, style = drl.encode(x, "ct")
    assert content.shape == (2, dim * 2**n_down, size // 2**n_down, size // 2**n_down)
    assert style.shape == (2, 5)
    assert drl.decode(content, style, "mr").shape == x.shape
    assert drl.content_only(x, "mr").shape == x.shape
    out = drl(x, x, torch.randn(2, 5), torch.randn(2, 5))
    assert out["ct2mr"].shape == x.shape and out["content_mr2ct"].shape == content.shape
    scores = MultiScaleDiscriminator(dim=dim, n_layers=3)(x)
    assert [s.shape[-1] for s in scores] == [size // 8, size // 16, size // 32]  # pooled between scales


def test_paper_size_content_code_is_64x64x256():
    encoder = ContentEncoder(dim=64, n_down=2, n_res=1)
    assert encoder(torch.zeros(1, 1, 256, 256)).shape == (1, 256, 64, 64)


def test_style_changes_image_not_content():
    torch.manual_seed(0)
    drl = DRLModule(dim=8, n_res=2, mlp_dim=32).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        content = drl.content_encoders["ct"](x)
        a = drl.decode(content, torch.randn(1, 8), "mr")
        b = drl.decode(content, torch.randn(1, 8), "mr")
        assert (a - b).abs().mean() > 1e-3  # another style, another image
        assert torch.equal(drl.content_encoders["ct"](x), content)  # the content code has no style input
        # content-only decoding ignores the image's own style: the zero style code for every image
        assert torch.equal(drl.content_only(x, "ct"), drl.decode(content, torch.zeros(1, 8), "ct"))
        assert torch.equal(drl.content_only(x, "ct"), drl.content_only(x, "ct"))


def test_losses_follow_equations_1_to_4():
    x, y = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    assert recon_loss(x, y) == 1.0
    assert latent_loss(x, y, torch.zeros(1, 8), torch.full((1, 8), 2.0)) == 3.0
    lsgan = AdversarialLoss("lsgan")
    real, fake = [torch.ones(1, 1, 2, 2)], [torch.zeros(1, 1, 2, 2)]
    assert lsgan.discriminator(real, fake) == 0.0 and lsgan.generator(fake) == 1.0  # MSE, no activation
    assert AdversarialLoss("log").generator([torch.zeros(1, 1, 2, 2)]) == pytest.approx(0.6931, abs=1e-4)  # -log(sigmoid(0))
    with pytest.raises(ValueError, match="adversarial mode"):
        AdversarialLoss("wgan")
    out = {"recon_ct": x, "recon_mr": x, "content_ct2mr": x, "content_ct": x, "style_ct2mr": torch.zeros(1, 8),
           "content_mr2ct": x, "content_mr": x, "style_mr2ct": torch.zeros(1, 8)}
    terms = DRLLoss()(out, y, y, torch.zeros(1, 8), torch.ones(1, 8), torch.tensor(2.0))
    assert terms["total"] == pytest.approx(25 * 2 + 10 * 2 + 0.1 * 1)


def test_content_only_path_exports_to_torchscript():
    drl = DRLModule(dim=8, n_res=1, mlp_dim=16).eval()
    x = torch.randn(1, 1, 64, 64)
    encoder = torch.jit.script(drl.content_encoders["mr"])
    generator = torch.jit.script(drl.generators["ct"])
    with torch.no_grad():
        assert torch.allclose(generator(encoder(x), torch.zeros(1, 8)), drl.content_only(x, "mr"), atol=1e-5)
        style = torch.randn(1, 8)
        assert torch.allclose(generator(encoder(x), style), drl.decode(drl.content_encoders["mr"](x), style, "ct"), atol=1e-5)
    assert torch.jit.script(StyleEncoder(dim=8))(x).shape == (1, 8)


def test_forward_decodes_each_generators_two_inputs_in_one_batch_exactly():
    """The iteration's batched decoding gives what separate encode/decode calls give (eq. 2-4)."""
    torch.manual_seed(0)
    drl = DRLModule(dim=8, n_res=2, mlp_dim=32).eval()
    x_ct, x_mr, style_ct, style_mr = torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64), torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        out = drl(x_ct, x_mr, style_ct, style_mr)
        ct2mr = drl.translate(x_ct, "ct", "mr", style_mr)
        expected = {"recon_ct": drl.reconstruct(x_ct, "ct"), "recon_mr": drl.reconstruct(x_mr, "mr"), "ct2mr": ct2mr,
                    "mr2ct": drl.translate(x_mr, "mr", "ct", style_ct), "style_ct2mr": drl.encode(ct2mr, "mr")[1]}
    for name, value in expected.items():
        assert torch.allclose(out[name], value, atol=1e-5), name
