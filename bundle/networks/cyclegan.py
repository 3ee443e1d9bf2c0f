"""The DACGAN baseline's image translator (paper section 3.2): a CycleGAN between CT and MR.

ResNet generators (Zhu et al. 2017) and PatchGAN discriminators. The generator's encoder half
is the content encoder's layout (7x7 conv, stride-2 downsamplings, instance-norm residual
blocks), so it is built from ``ContentEncoder``; its decoder upsamples by nearest neighbour +
convolution rather than transposed convolutions, which avoid checkerboard artefacts. The
discriminator is MONAI's ``PatchDiscriminator``, the 70x70 PatchGAN with instance norm.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn

from bundle.errors import DataError
from bundle.networks.drl import DOMAINS
from bundle.networks.encoders import ContentEncoder
from bundle.networks.layers import reflect_conv

__all__ = ["ResnetGenerator", "CycleGAN", "PatchDiscriminators", "load_translator"]


class ResnetGenerator(nn.Module):
    """Image -> image of the other modality: 7x7 conv -> ``n_down`` stride-2 convs -> ``n_res``
    residual blocks -> ``n_down`` x [2x upsample, 3x3 conv, instance norm, ReLU] -> 7x7 conv -> tanh.

    Args:
        in_channels: image channels (in = out).
        dim: channels of the first layer.
        n_down: downsamplings (= upsamplings).
        n_res: residual blocks (CycleGAN: 6 at 128 px, 9 at 256 px).
    """

    def __init__(self, in_channels: int = 1, dim: int = 64, n_down: int = 2, n_res: int = 6) -> None:
        super().__init__()
        self.encoder = ContentEncoder(in_channels, dim, n_down, n_res, norm="instance")
        layers: list[nn.Module] = []
        channels = self.encoder.out_channels
        for _ in range(n_down):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), reflect_conv(channels, channels // 2, 3, norm="instance")]
            channels //= 2
        layers.append(reflect_conv(channels, in_channels, 7, act="tanh"))
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class CycleGAN(nn.Module):
    """The two generators, ``ct2mr`` and ``mr2ct``; ``forward`` computes one iteration's
    translations and cycle reconstructions once, for both the D and the G update.

    Args:
        in_channels, dim, n_down, n_res: as ``ResnetGenerator``.
    """

    def __init__(self, in_channels: int = 1, dim: int = 64, n_down: int = 2, n_res: int = 6) -> None:
        super().__init__()
        self.generators = nn.ModuleDict({f"{a}2{b}": ResnetGenerator(in_channels, dim, n_down, n_res) for a, b in (DOMAINS, DOMAINS[::-1])})

    def translate(self, x: torch.Tensor, source: str, target: str) -> torch.Tensor:
        """``x`` of ``source`` rendered as ``target`` (one-to-one: CycleGAN has no style code)."""
        return self.generators[f"{source}2{target}"](x)

    def reconstruct(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """Cycle reconstruction: ``x`` to the other modality and back."""
        other = DOMAINS[1 - DOMAINS.index(domain)]
        return self.translate(self.translate(x, domain, other), other, domain)

    def forward(self, x_ct: torch.Tensor, x_mr: torch.Tensor) -> dict[str, torch.Tensor]:
        ct2mr, mr2ct = self.translate(x_ct, "ct", "mr"), self.translate(x_mr, "mr", "ct")
        return {"ct2mr": ct2mr, "mr2ct": mr2ct, "cycle_ct": self.translate(ct2mr, "mr", "ct"), "cycle_mr": self.translate(mr2ct, "ct", "mr")}


class PatchDiscriminators(nn.Module):
    """One PatchGAN per modality, in one module so a discriminator update is a single forward
    call (what DistributedDataParallel needs). Each returns its score map as a one-element
    list, the multi-scale format the adversarial loss takes.

    Args:
        in_channels: image channels.
        dim: channels of the first layer (CycleGAN: 64).
        n_layers: layers after the first (3: the 70x70 PatchGAN).
    """

    def __init__(self, in_channels: int = 1, dim: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        self.critics = nn.ModuleDict({d: PatchDiscriminator(2, dim, in_channels, num_layers_d=n_layers, norm="INSTANCE") for d in DOMAINS})

    def ct(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.critics["ct"](x)[-1:]

    def mr(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.critics["mr"](x)[-1:]

    def forward(self, x_ct: torch.Tensor, x_mr: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.ct(x_ct), self.mr(x_mr)


def load_translator(path: str | Path, source: str = "ct", target: str = "mr", **sizes) -> ResnetGenerator:
    """The ``source``-to-``target`` generator of a trained CycleGAN (``configs/cyclegan_train.yaml``
    writes its ``state_dict`` to ``cyclegan_path``), frozen and in eval mode.

    Args:
        path: the CycleGAN ``state_dict``.
        source, target: the translation direction.
        sizes: ``ResnetGenerator`` sizes (``dim``, ``n_down``, ``n_res``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "does not exist: train the CycleGAN first (configs/cyclegan_train.yaml) or pass --cyclegan_path")
    generator = ResnetGenerator(**sizes)
    prefix = f"generators.{source}2{target}."
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        generator.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    except RuntimeError as e:
        raise DataError(path, f"does not fit this configuration's CycleGAN sizes (dim, cyclegan_res): {str(e).splitlines()[-1].strip()}") from e
    return generator.requires_grad_(False).eval()
