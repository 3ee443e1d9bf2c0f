"""The inference network (pipeline step 6): content encoder -> content-only image -> UNet, per slice.

One 2D module that MONAI's ``SliceInferer`` applies to every slice of a volume, that MONAI Label
loads from ``models/model.pt``, and that exports to TorchScript. It takes a normalised slice of
any size, brings it to the square size the networks were trained on and brings the logits back.
The dual path (not in the paper) averages it with a UNet on the image itself: two views of one
slice, whose errors differ (the content path loses detail, the image path the domain). The
fallback pair (not in the paper) is two UNets on the image: the first segments, the second (the
contrast-agnostic one) takes over a case whose first mask fails the quality checks (that choice
is per volume: ``bundle.quality.FallbackPathd``, in inference's postprocessing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn

from bundle.data.intensity import CT_WINDOW, MR_PERCENTILES
from bundle.errors import DataError
from bundle.networks.content_only import ContentOnly
from bundle.networks.geometry import from_square, to_square
from bundle.networks.trained_for import TrainedFor

OTHER_PATHS = ("refuse", "drop", "take")  # LiverSegmenter(other_paths=...)

__all__ = ["OTHER_PATHS", "LiverSegmenter", "describe_paths", "join_dual_path", "join_fallback", "load_drl_weights", "load_model", "read_weights",
           "recorded_adaptation"]


class LiverSegmenter(nn.Module):
    """Liver logits of normalised slices: ``unet(content_path(x))``, at the input's own size.

    The config composes it (``network_def``): the content path is a ``ContentOnly`` (DADR: the
    content encoder of the input's modality, then the content-only image) or ``nn.Identity``
    (no adaptation, the supervised bound, DACGAN: the UNet sees the image itself).

    Args:
        image_size: square size the networks were trained at; slices are brought to it and back.
        content_path: ``ContentOnly`` or ``None`` (the identity).
        unet: the 2D segmentation network on (content-only) slices; ``None``: MONAI's ``UNet``
            with channels (16, 32, 64, 128, 256), 2 residual units, 1 input and 2 output channels.
        ct_window, mr_percentiles: the intensity normalisation the weights are trained for,
            recorded with them with ``image_size`` (``TrainedFor``); other values refuse to load.

        image_unet: a second UNet, trained on the images themselves (``None``: none). With a
            content path, the dual path: its class probabilities are averaged with ``unet``'s on
            the content-only images; the output is then the log of the mean probabilities (a
            softmax gives them back). Without one, the fallback pair: the output is ``unet``'s,
            the second UNet's liver probability comes with it (``segment_with_content``'s third
            output) for the per-case fallback. Assembled from two trained models by
            ``join_dual_path`` or ``join_fallback``; never trained as one.
        other_paths: what loading weights of another composition (their recorded ``paths``) does:
            ``refuse`` (an error naming both); ``drop``: the network becomes theirs when it has
            their parts, dropping the paths they lack (inference's ``--adaptation auto``: MONAI
            Label builds the served network once and reloads it whenever ``/train`` publishes
            another model, e.g. a UNet in place of the shipped dual path); ``take``: the network
            keeps its composition and takes its parts from weights that have more (train.yaml:
            MONAI Label's ``/train`` starts from the served model, a UNet from a dual path's
            image UNet).

    The content path is frozen: stage 2 trains the UNet only, so ``train()`` keeps it in eval mode.
    """

    def __init__(self, image_size: int = 128, content_path: nn.Module | None = None, unet: nn.Module | None = None,
                 ct_window: Sequence[float] = CT_WINDOW, mr_percentiles: Sequence[float] = MR_PERCENTILES,
                 image_unet: nn.Module | None = None, other_paths: str = "refuse") -> None:
        super().__init__()
        if other_paths not in OTHER_PATHS:
            raise ValueError(f"other_paths must be one of {OTHER_PATHS}, got {other_paths!r}")
        self.other_paths = other_paths
        self.image_size = image_size
        self.content_path = content_path if content_path is not None else nn.Identity()
        self.content_path.requires_grad_(False).eval()
        self.unet = unet if unet is not None else UNet(2, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)
        self.image_unet = image_unet
        self.trained_for = TrainedFor(image_size, ct_window, mr_percentiles)
        # which paths the weights are for, saved with them: loading them into another composition is
        # an error that says so, even in a non-strict load (MONAI's copy_model_state)
        has_content = not isinstance(self.content_path, nn.Identity)
        self.register_buffer("paths", torch.tensor([has_content, image_unet is not None], dtype=torch.uint8))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
        key = prefix + "paths"
        if key not in state_dict:  # weights saved before the paths were recorded: the keys alone tell
            state_dict[key] = self.paths.clone()
        theirs = state_dict[key].cpu().to(torch.uint8)
        if not torch.equal(theirs, self.paths.cpu()) and not self._other_paths(state_dict, prefix, theirs):
            error_msgs.append(f"the weights are a model with {describe_paths(theirs)}, but this configuration builds one with "
                              f"{describe_paths(self.paths)} (other_paths: {self.other_paths}): pass the --adaptation the model "
                              "was trained for (a server built for another model: restart it)")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _other_paths(self, state_dict: dict, prefix: str, theirs: torch.Tensor) -> bool:
        """Apply ``other_paths`` to weights with other ``paths`` (before the submodules load: torch
        loads a module's own state first); False where it cannot."""
        (my_content, my_dual), (their_content, their_dual) = self.paths.tolist(), theirs.tolist()
        if self.other_paths == "drop" and (my_content or not their_content) and (my_dual or not their_dual):
            if not their_content:  # the UNet on the images is `unet` (shaped like the image UNet)
                self.content_path = nn.Identity()
            if not their_dual:
                self.image_unet = None
            self.paths.copy_(theirs)
            return True
        if self.other_paths == "take" and not my_dual and their_dual:
            # of a dual path, a UNet on the images takes the image UNet, a DADR model the content path and its UNet;
            # of a fallback pair, a UNet on the images takes the first UNet
            theirs_named = {k[len(prefix):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
            for name, value in theirs_named.items():
                if name.startswith("image_unet."):
                    if not my_content and their_content:
                        state_dict[prefix + name.removeprefix("image_")] = value
                elif my_content or not name.startswith(("content_path.", "unet.")) or (name.startswith("unet.") and not their_content):
                    state_dict[prefix + name] = value
            state_dict[prefix + "paths"] = self.paths.clone()
            return True
        return False

    def train(self, mode: bool = True) -> "LiverSegmenter":
        super().train(mode)
        self.content_path.eval()
        return self

    def content(self, x: torch.Tensor) -> torch.Tensor:
        """Content-only images of square slices ``x`` (N, C, S, S), channel by channel: a 2.5D
        input's adjacent slices each go through the 1-channel content path."""
        n, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        return self.content_path(x.reshape(n * c, 1, h, w)).reshape(n, c, h, w)

    def _square(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        square = to_square(x, self.image_size)
        content = self.content(square)
        logits = self.unet(content)
        paths = None
        if self.image_unet is not None:
            each = torch.softmax(logits.float(), dim=1), torch.softmax(self.image_unet(square).float(), dim=1)
            if not isinstance(self.content_path, nn.Identity):  # the dual path: the mean; a fallback pair: the first UNet's
                logits = ((each[0] + each[1]) / 2).clamp_min(1e-12).log()
            paths = torch.cat([p[:, 1:2] for p in each], dim=1)  # each path's liver probability, for the quality numbers
        return logits, content, paths

    def segment_with_content(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(logits, content-only image) of slices ``x`` (N, C, H, W), both (N, ., H, W); the
        content-only image is that of the middle channel (the slice itself for a 2.5D input).
        With ``image_unet``, the logits are the log of the two UNets' mean probabilities (the dual
        path) or the first UNet's (a fallback pair), and a third output holds each path's liver
        probability (N, 2, H, W): where they disagree, and the fallback's mask."""
        logits, content, paths = self._square(x)
        middle = content.shape[1] // 2
        h, w = x.shape[-2], x.shape[-1]
        out = from_square(logits, h, w), from_square(content[:, middle : middle + 1], h, w)
        return out if paths is None else (*out, from_square(paths, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_unet is not None and isinstance(self.content_path, nn.Identity):
            # a fallback pair's output is its first UNet's: the second is not run (training, adapt, export)
            return from_square(self.unet(to_square(x, self.image_size)), x.shape[-2], x.shape[-1])
        return from_square(self._square(x)[0], x.shape[-2], x.shape[-1])


def recorded_adaptation(model_path: str | Path) -> str:
    """The inference ``--adaptation`` that builds the network of ``model_path``'s weights (``none``,
    ``dadr`` or ``dual``): what ``inference.yaml --adaptation auto`` builds, so that whichever model
    is served (the shipped dual path, a UNet retrained by MONAI Label) loads without a flag.
    Weights saved before the paths were recorded tell it by their keys; a missing file gives
    ``none``, and loading it then fails naming the file (``load_model``)."""
    path = Path(model_path)
    if not path.is_file():
        return "none"
    state = read_weights(path)
    if "paths" in state:
        content, image = (bool(v) for v in state["paths"])
    else:
        content, image = (any(k.startswith(prefix) for k in state) for prefix in ("content_path.", "image_unet."))
    return "dual" if content and image else "dadr" if content else "fallback" if image else "none"


def describe_paths(paths: torch.Tensor) -> str:
    """A ``LiverSegmenter``'s recorded ``paths`` in words, with the inference adaptation that builds them."""
    content, image = (bool(v) for v in paths)
    if content and image:
        return "a content path and a UNet on the images (--adaptation dual)"
    if image:
        return "a UNet on the images with a fallback UNet (--adaptation fallback)"
    return "a content path (--adaptation dadr)" if content else "a UNet on the images alone (--adaptation none)"


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
    wanted = {k: v for k, v in state.items() if k in network.content_path.state_dict()}  # the DRLModule is a ContentOnly, key for key
    try:
        network.content_path.load_state_dict(wanted)
    except RuntimeError as e:  # the last line names one mismatching tensor
        raise DataError(path, f"does not fit this configuration's DRLModule sizes (dim, n_res, shared_res...): "
                              f"{str(e).splitlines()[-1].strip()}") from e
    return network


def join_dual_path(content_model: str | Path, image_model: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a dual-path ``LiverSegmenter`` from two trained ones: ``content_model``
    (``--adaptation dadr``: content path and its UNet) and ``image_model`` (a UNet on the images:
    ``none``, ``cyclegan``, ``dadr_style``; it becomes ``image_unet``). Both must be trained for the
    same image size and intensity settings, with UNets of one shape (inference.yaml builds both alike)."""
    content, image = read_weights(Path(content_model)), read_weights(Path(image_model))
    if not any(k.startswith("content_path.") for k in content) or any(k.startswith("image_unet.") for k in content):
        raise DataError(content_model, "is not a single DADR model: the dual path's first member is trained with --adaptation dadr")
    if any(k.startswith(("content_path.", "image_unet.")) for k in image):
        raise DataError(image_model, "is not a UNet on the images themselves: the dual path's second member has no content path "
                                     "(--adaptation none, cyclegan or dadr_style)")
    recorded = [TrainedFor.describe(s["trained_for.values"]) for s in (content, image) if "trained_for.values" in s]
    if len(set(recorded)) > 1:
        raise DataError(image_model, f"was trained for {recorded[1]}, but {content_model} for {recorded[0]}")
    shapes = [{k: tuple(v.shape) for k, v in s.items() if k.startswith("unet.")} for s in (content, image)]
    if shapes[0] != shapes[1]:
        raise DataError(image_model, f"has another UNet than {content_model} (--unet_channels, --context_slices, --out_channels): "
                                     "the dual path's two UNets have one shape")
    return content | {"image_" + k: v for k, v in image.items() if k.startswith("unet.")} | {"paths": torch.tensor([1, 1], dtype=torch.uint8)}


def join_fallback(first_model: str | Path, fallback_model: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a fallback pair (``--adaptation fallback``) from two UNets on the images of one
    shape and intensity settings: ``first_model`` segments, ``fallback_model`` (the contrast-agnostic one)
    takes over a case whose first mask fails the quality checks."""
    first, fallback = read_weights(Path(first_model)), read_weights(Path(fallback_model))
    for path, state in ((first_model, first), (fallback_model, fallback)):
        if any(k.startswith(("content_path.", "image_unet.")) for k in state):
            raise DataError(path, "is not a single UNet on the images: a fallback pair joins two (--adaptation none)")
    recorded = [TrainedFor.describe(s["trained_for.values"]) for s in (first, fallback) if "trained_for.values" in s]
    if len(set(recorded)) > 1:
        raise DataError(fallback_model, f"was trained for {recorded[1]}, but {first_model} for {recorded[0]}")
    if {k: tuple(v.shape) for k, v in first.items() if k.startswith("unet.")} != {k: tuple(v.shape) for k, v in fallback.items() if k.startswith("unet.")}:
        raise DataError(fallback_model, f"has another UNet than {first_model}: a fallback pair's two UNets have one shape")
    return first | {"image_" + k: v for k, v in fallback.items() if k.startswith("unet.")} | {"paths": torch.tensor([0, 1], dtype=torch.uint8)}


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
