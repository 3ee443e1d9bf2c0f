"""Shipping trained weights: half-precision copies of ``model.pt`` and ``drl.pth`` for ``models/``,
and publishing a retrained model as the served one.

The two float32 state dicts of the 128 px / dim 32 model are 25 + 33 MB; stored as float16 they
fit the 40 MB budget of ``models/`` together. Loading needs nothing special: ``load_state_dict``
copies float16 tensors into the float32 parameters, and inference runs in float32.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from bundle.atomic import atomic_outputs
from bundle.errors import DataError
from bundle.networks.segmenter import join_dual_path, join_fallback, read_weights

__all__ = ["ship_weights", "publish"]


def _half(path: Path, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """float16 copy of the weights in ``path``, or of ``state`` (then ``path`` only names it in errors)."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in (read_weights(path) if state is None else state).items()}
    if overflow := [k for k, v in half.items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        raise DataError(path, f"has weights beyond float16's range in {len(overflow)} tensors, e.g. {overflow[0]}: ship it in float32")
    return half


def ship_weights(model: str | Path, drl: str | Path, out: str | Path = "models", max_mb: float = 40.0,
                 image_model: str | Path | None = None, fallback_model: str | Path | None = None) -> dict[str, float]:
    """Write float16 copies of the inference network ``model`` and the DRLModule ``drl`` as
    ``out/model.pt`` and ``out/drl.pth``; both or neither are written. Returns their sizes in MB.
    With ``image_model`` (a UNet on the images), ``model.pt`` is the dual path of ``model`` (a
    DADR model) and ``image_model`` (``inference.yaml --adaptation dual``); with ``fallback_model``,
    the fallback pair of ``model`` and ``fallback_model`` (two UNets on the images, ``--adaptation fallback``).

    Raises ``DataError`` if the copies together exceed ``max_mb``.
    """
    out = Path(out)
    if image_model is not None and fallback_model is not None:
        raise DataError("--fallback_model", "a model is a dual path (--image_model) or a fallback pair (--fallback_model), not both")
    joined = (join_dual_path(model, image_model) if image_model is not None
              else join_fallback(model, fallback_model) if fallback_model is not None else None)
    states = [_half(Path(model), joined), _half(Path(drl))]
    finals = [out / "model.pt", out / "drl.pth"]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_outputs(finals) as temps:
        for state, tmp in zip(states, temps):
            torch.save(state, tmp)
        sizes = {final.name: tmp.stat().st_size / 2**20 for final, tmp in zip(finals, temps)}
        if sum(sizes.values()) > max_mb:
            raise DataError(out, f"the weights would take {sum(sizes.values()):.1f} MB ({sizes}), over the {max_mb} MB budget")
    return sizes


def publish(model: str | Path, served: str | Path) -> Path:
    """Replace the served model ``served`` (``models/model.pt``) by the trained ``model``, atomically.

    Training writes into its own run folder; only the workflow that is meant to update what a
    server serves (``train.yaml``'s ``run``, which MONAI Label's train task runs) calls this.
    """
    model, served = Path(model), Path(served)
    read_weights(model)  # a readable state dict with finite weights, or a DataError naming the file
    served.parent.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([served]) as (tmp,):
        shutil.copyfile(model, tmp)
    return served
