"""The inference network (pipeline step 6): content encoder -> content-only image -> UNet, per slice.

One 2D module that MONAI's ``SliceInferer`` applies to every slice of a volume, that MONAI Label
loads from ``models/model.pt``, and that exports to TorchScript. It takes a normalised slice of
any size, brings it to the square size the networks were trained on and brings the logits back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence
import torch
from monai.networks.nets import UNet
from torch import nn

from bundle.data.intensity import CT_WINDOW, MR_PERCENTILES
from bundle.errors import DataError
from bundle.networks.drl import DOMAINS
from bundle.networks.encoders import content_encoders
from bundle.networks.generator import Generator
from bundle.networks.geometry import from_square, to_square
from bundle.networks.trained_for import TrainedFor

__all__ = ["ContentOnly", "LiverSegmenter", "load_drl_weights", "load_model", "read_weights", "ADAPTATIONS"]

ADAPTATIONS = ("dadr", "none")  # content-only images (the paper) or the normalised image as it is


class ContentOnly(nn.Module):
    """Content-only image of a slice: ``G_ct(Ec_modality(x), 0)`` (paper section 2.2).

    Holds both domains' content encoders (the weights are the DRLModule's, key for key) and the
    generator that decodes content-only images; ``modality`` picks the encoder.
    """

    def __init__(self, modality: str = "mr", in_channels: int = 1, dim: int = 64, n_down: int = 2, n_res: int = 4,
                 style_dim: int = 8, mlp_dim: int = 256, norm: str = "instance", shared_res: int = 0) -> None:
        super().__init__()
        if modality not in DOMAINS:
            raise ValueError(f"modality must be one of {DOMAINS}, got {modality!r}")
        self.content_encoders = content_encoders(DOMAINS, in_channels, dim, n_down, n_res, norm, shared_res)
        self.generator = Generator(self.content_encoders["ct"].out_channels, in_channels, n_down, n_res, style_dim, mlp_dim)
        self.modality = modality
        self.style_dim = style_dim

    def content_only(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Content-only image of square slices ``x`` of ``modality``."""
        code = x
        for name, encoder in self.content_encoders.items():
            if name == modality:
                code = encoder(x)
        neutral = torch.zeros(x.shape[0], self.style_dim, device=x.device, dtype=x.dtype)
        return self.generator(code, neutral)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.content_only(x, self.modality)


class LiverSegmenter(nn.Module):
    """Liver logits of normalised slices: ``UNet(content_only(x))``, at the input's own size.

    Args:
        image_size: square size the DRLModule and the UNet were trained at.
        modality: ``mr`` or ``ct``, the modality of the slices it will see.
        adaptation: ``dadr`` (UNet on content-only images) or ``none`` (UNet on the image itself:
            the no-adaptation lower bound and the supervised upper bound).
        out_channels: output channels (background, liver), for the default UNet.
        unet: the 2D segmentation network on (content-only) slices, built by the config; ``None``:
            MONAI's ``UNet`` with channels (16, 32, 64, 128, 256) and 2 residual units.
        ct_window, mr_percentiles: the intensity normalisation the weights are trained for,
            recorded with them with ``image_size`` (``TrainedFor``); other values refuse to load.
        drl: DRLModule sizes (``dim``, ``n_down``, ``n_res``, ``style_dim``, ``mlp_dim``, ``norm``,
            ``shared_res``), used with ``adaptation="dadr"``.

    The content path is frozen: stage 2 trains the UNet only, so ``train()`` keeps it in eval mode.
    """

    def __init__(self, image_size: int = 128, modality: str = "mr", adaptation: str = "dadr", in_channels: int = 1, out_channels: int = 2,
                 unet: nn.Module | None = None, ct_window: Sequence[float] = CT_WINDOW,
                 mr_percentiles: Sequence[float] = MR_PERCENTILES, **drl) -> None:
        super().__init__()
        if adaptation not in ADAPTATIONS:
            raise ValueError(f"adaptation must be one of {ADAPTATIONS}, got {adaptation!r}")
        self.image_size = image_size
        self.adaptation = adaptation
        self.content_path = ContentOnly(modality, in_channels, **drl) if adaptation == "dadr" else nn.Identity()
        self.content_path.requires_grad_(False).eval()
        self.unet = unet if unet is not None else UNet(2, in_channels, out_channels, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)
        self.trained_for = TrainedFor(image_size, ct_window, mr_percentiles)

    def train(self, mode: bool = True) -> "LiverSegmenter":
        super().train(mode)
        self.content_path.eval()
        return self

    def content(self, x: torch.Tensor) -> torch.Tensor:
        """Content-only images of square slices ``x`` (N, C, S, S), channel by channel: a 2.5D
        input's adjacent slices each go through the 1-channel content path."""
        n, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        return self.content_path(x.reshape(n * c, 1, h, w)).reshape(n, c, h, w)

    def _square(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        content = self.content(to_square(x, self.image_size))
        return self.unet(content), content

    def segment_with_content(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, content-only image) of slices ``x`` (N, C, H, W), both (N, ., H, W); the
        content-only image is that of the middle channel (the slice itself for a 2.5D input)."""
        logits, content = self._square(x)
        middle = content.shape[1] // 2
        return from_square(logits, x.shape[-2], x.shape[-1]), from_square(content[:, middle : middle + 1], x.shape[-2], x.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_square(self._square(x)[0], x.shape[-2], x.shape[-1])


def load_drl_weights(network: LiverSegmenter, drl_path: str | Path) -> LiverSegmenter:
    """Copy a trained DRLModule's content encoders and content-only generator into ``network``.

    ``drl_path`` is the ``state_dict`` stage 1 writes (``configs/drl_train.yaml``, ``drl_path``);
    it must have been trained for the same image size and intensity normalisation as ``network``.
    A network without adaptation is returned as it is.
    """
    if not isinstance(network.content_path, ContentOnly):
        return network
    path = Path(drl_path)
    if not path.is_file():
        raise DataError(path, "does not exist: train stage 1 first (configs/drl_train.yaml) or pass --drl_path")
    state = read_weights(path)
    if "trained_for.values" in state:
        recorded = TrainedFor.describe(state["trained_for.values"])
        if recorded != TrainedFor.describe(network.trained_for.values):
            raise DataError(path, f"was trained for {recorded}, but this configuration has {TrainedFor.describe(network.trained_for.values)}: "
                                  "pass the same values to every stage")
    wanted = {k: v for k, v in state.items() if k.startswith("content_encoders.")}
    wanted |= {"generator." + k[len("generators.ct."):]: v for k, v in state.items() if k.startswith("generators.ct.")}
    try:
        network.content_path.load_state_dict(wanted)
    except RuntimeError as e:  # the last line names one mismatching tensor
        raise DataError(path, f"does not fit this configuration's DRLModule sizes (dim, n_res, shared_res...): "
                              f"{str(e).splitlines()[-1].strip()}") from e
    return network


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``state_dict`` file, refused by name when unreadable or holding NaN/Inf weights (they would
    give empty masks without any error)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, pickled objects
        raise DataError(path, f"is not a readable weights file: {' '.join(str(e).split())[:300]}") from e
    if not isinstance(state, dict):
        raise DataError(path, f"holds a {type(state).__name__}, not a state_dict of weights")
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DataError(path, f"has non-finite (NaN/Inf) weights in {len(bad)} tensors, e.g. {bad[0]}: retrain; these weights cannot segment")
    return state


def load_model(network: nn.Module, model_path: str | Path) -> nn.Module:
    """Load ``model.pt`` into the inference network, naming the file when it does not fit: other
    sizes, other image size or intensity normalisation (``TrainedFor``), non-finite weights."""
    path = Path(model_path)
    if not path.is_file():
        raise DataError(path, "does not exist: train stage 2 first (configs/train.yaml) or pass --model_path")
    state = read_weights(path)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        details = " ".join(str(e).split("\n", 1)[-1].split())
        raise DataError(path, f"does not fit this configuration (network sizes, adaptation, image size or intensity settings): {details[:500]}") from e
    return network
