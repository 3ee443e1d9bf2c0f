"""2D slices for the 2D networks (pipeline step 2): volumes -> normalised, square, resized slices.

Volumes are preprocessed (``bundle.data.preprocess``: loaded in threads, reoriented to RAS so
every modality shows the same anatomy the same way, normalised per modality to [-1, 1] like the
generators' tanh), then cut into axial slices that are resized in-plane to ``image_size``
keeping their aspect ratio (padded with -1, the normalised background).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import io
import lzma

import numpy as np
import torch
from torch.utils.data import Dataset

from bundle.atomic import atomic_outputs
from bundle.data.datalist import read_datalist, target_with_pseudo_labels
from bundle.data.intensity import CT_WINDOW, MR_PERCENTILES
from bundle.data.preprocess import volume_transform
from bundle.errors import DataError, unwrap_data_error
from bundle.networks.geometry import to_square

__all__ = ["NO_LABEL", "volume_slices", "load_slices", "load_target_slices", "save_slice_cache", "load_slice_cache", "UnpairedSlices", "evenly_spaced"]


CACHE_NO_LABEL = 255  # NO_LABEL in a slice cache's uint8 labels
NO_LABEL = -1.0  # the label map of a volume that has none (MR whose pseudo-labels failed the filters): the task term skips it


def _to_slices(volume: torch.Tensor, image_size: int, mode: str, pad_value: float) -> torch.Tensor:
    """(1, H, W, D) -> (D, 1, S, S): the axial slices, each brought to the networks' square input."""
    return to_square(torch.as_tensor(volume).permute(3, 0, 1, 2), image_size, mode, pad_value)


def _plain_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate, dropping MetaTensor wrappers: slices are plain training tensors."""
    return torch.cat(parts).as_subclass(torch.Tensor)


def _load_volumes(entries: list[dict], transform: Callable, num_workers: int) -> list[dict]:
    """``transform`` of every entry, in ``num_workers`` threads. Not MONAI's ``CacheDataset``: after
    one bad volume its thread pool goes on reading the others, and a thread killed inside ITK at
    exit aborts the process; here pending reads are cancelled and running ones finish first."""
    if num_workers <= 1:
        return [transform(entry) for entry in entries]
    with ThreadPoolExecutor(num_workers) as pool:
        futures = [pool.submit(transform, entry) for entry in entries]
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def volume_slices(entries: list[dict], modality: str, image_size: int, with_label: bool = False,
                  min_foreground: float = 0.05, num_workers: int = 0, source: str | Path = "datalist",
                  ct_window: Sequence[float] = CT_WINDOW, mr_percentiles: Sequence[float] = MR_PERCENTILES,
                  context_slices: int = 0, missing_label: float | None = None) -> dict[str, torch.Tensor]:
    """All usable axial slices of the volumes ``entries`` (dicts with ``image`` [and ``label``] paths).

    Returns ``{"image": (N,C,S,S), "subject": (N,) index into entries}`` (C = 1 + 2 * ``context_slices``) and ``"label"`` (N,1,S,S,
    the label map's class ids: 0/1 for a liver mask; ``missing_label`` for entries without one) when ``with_label``. Slices where less than ``min_foreground`` of the pixels are above the
    background (-1) are dropped: they teach nothing about anatomy. ``source`` names the entries'
    origin in errors; ``ct_window``, ``mr_percentiles`` and ``context_slices`` as in :func:`volume_transform`.
    ``missing_label``: the label of every slice of an entry without one (``None``: each must have one).
    """
    if not entries:
        raise DataError(source, f"has no {modality.upper()} volumes")
    labelled = [with_label and "label" in e for e in entries]
    if with_label and missing_label is None and not all(labelled):
        missing = [e["image"] for e, has in zip(entries, labelled) if not has]
        raise DataError(source, f"has no label for {len(missing)} volume(s), e.g. {missing[0]}")
    volumes = [None] * len(entries)
    for has_label in {*labelled}:  # the volumes with labels and those without, each with its transform
        group = [i for i, has in enumerate(labelled) if has == has_label]
        transform = volume_transform(modality, has_label, ct_window=ct_window, mr_percentiles=mr_percentiles, context_slices=context_slices)
        try:
            loaded = _load_volumes([entries[i] for i in group], transform, num_workers)
        except RuntimeError as e:  # a bad volume: report the file, not MONAI's transform wrapper
            raise unwrap_data_error(e) from e
        for i, item in zip(group, loaded):
            volumes[i] = item
    images, labels, subjects = [], [], []
    for i, item in enumerate(volumes):
        image = _to_slices(item["image"], image_size, "bilinear", -1.0)
        keep = (image[:, image.shape[1] // 2] > -0.95).float().mean(dim=(1, 2)) >= min_foreground  # the slice itself
        images.append(image[keep])
        subjects.append(torch.full((int(keep.sum()),), i))
        if with_label:
            label = _to_slices(item["label"], image_size, "nearest", 0.0)[keep].round() if labelled[i] else None
            labels.append(torch.full((int(keep.sum()), 1, *image.shape[2:]), float(missing_label)) if label is None else label)
    out = {"image": _plain_cat(images), "subject": torch.cat(subjects)}
    if with_label:
        out["label"] = _plain_cat(labels)
    if len(out["image"]) == 0:
        raise DataError(source, f"has no {modality.upper()} slice with anatomy")
    return out


def load_slices(datalist: str | Path, section: str, modality: str, image_size: int, with_label: bool = False,
                min_foreground: float = 0.05, num_workers: int = 0, **intensity) -> dict[str, torch.Tensor]:
    """:func:`volume_slices` of one datalist section (``intensity``: ``ct_window``, ``mr_percentiles``)."""
    entries = read_datalist(datalist, section)
    return volume_slices(entries, modality, image_size, with_label, min_foreground, num_workers, source=f"{datalist} [{section}]", **intensity)


def _target_entries(datalist: str | Path, pseudo_labels: bool) -> tuple[list[dict], str]:
    """Stage 1's MR volumes and their origin for errors: ``target``; with ``pseudo_labels`` every
    unlabelled MR with its pseudo-label where it has one (``target_with_pseudo_labels``)."""
    if pseudo_labels:
        return target_with_pseudo_labels(datalist), f"{datalist} [target + pseudo-labels]"
    return read_datalist(datalist, "target"), f"{datalist} [target]"


def load_target_slices(datalist: str | Path, image_size: int, pseudo_labels: bool = False, num_workers: int = 0, **intensity) -> dict[str, torch.Tensor]:
    """Stage 1's MR slices: the ``target`` section; with ``pseudo_labels``, every unlabelled MR with the
    pseudo-labels of ``PSEUDO_SECTION`` and ``NO_LABEL`` on the slices of those without."""
    entries, source = _target_entries(datalist, pseudo_labels)
    return volume_slices(entries, "mr", image_size, with_label=pseudo_labels, num_workers=num_workers, source=source,
                         missing_label=NO_LABEL, **intensity)


def save_slice_cache(datalist: str | Path, path: str | Path, image_size: int, num_workers: int = 0, mr_pseudo_labels: bool = False,
                     **intensity) -> dict:
    """Stage 1's slices of a datalist (``source`` CT with labels, ``target`` MR) in one xz file;
    ``mr_pseudo_labels``: the MR with their pseudo-labels, as :func:`load_target_slices` (for
    drl_train.yaml's ``target_pseudo_labels``).

    Stage 1 reads only slices, so a machine that trains it (a GPU node, a cluster job) needs
    neither the volumes nor their readers: this file, a few times smaller than the volumes, is
    enough (``load_slice_cache``). Images are stored as 8 bits over [-1, 1] (steps of 1/127.5,
    below the generators' output precision that matters); returns the counts written.
    """
    quantise = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    cache = {}
    ct = (read_datalist(datalist, "source"), f"{datalist} [source]", "ct", True, None)
    mr = (*_target_entries(datalist, mr_pseudo_labels), "mr", mr_pseudo_labels, NO_LABEL)
    for entries, source, modality, with_label, missing_label in (ct, mr):
        data = volume_slices(entries, modality, image_size, with_label, num_workers=num_workers, source=source,
                             missing_label=missing_label, **intensity)
        cache[modality] = {"image": quantise(data["image"]), "subject": data["subject"],
                           "names": [e.get("subject") or Path(e["image"]).name for e in entries]}
        if with_label:
            cache[modality]["label"] = torch.where(data["label"] == NO_LABEL, CACHE_NO_LABEL, data["label"]).to(torch.uint8)
    buffer = io.BytesIO()
    torch.save(cache, buffer)
    with atomic_outputs([Path(path)]) as (tmp,):
        tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=9))
    return {m: len(c["image"]) for m, c in cache.items()}


def load_slice_cache(path: str | Path, modality: str, with_label: bool = False, subjects: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """:func:`load_slices`'s result for ``modality`` from a :func:`save_slice_cache` file, restricted
    to the volumes named in ``subjects`` (a fold's training subjects; ``None``: all)."""
    try:
        cache = torch.load(io.BytesIO(lzma.decompress(Path(path).read_bytes())), weights_only=True)[modality]
    except (OSError, lzma.LZMAError, KeyError, RuntimeError) as e:
        raise DataError(path, f"is not a slice cache with {modality.upper()} slices ({e})") from e
    names = cache["names"]
    wanted = names if subjects is None else list(subjects)
    if missing := [s for s in wanted if s not in names]:
        raise DataError(path, f"has no subject {missing[0]!r} (it has {', '.join(names)})")
    if with_label and "label" not in cache:
        hint = " (MR pseudo-labels: prepare_data.py slice_cache --mr_pseudo_labels True)" if modality == "mr" else ""
        raise DataError(path, f"has no {modality.upper()} labels{hint}")
    keep = torch.isin(cache["subject"], torch.tensor([i for i, name in enumerate(names) if name in wanted]))  # every volume of a subject (MR phases)
    out = {"image": cache["image"][keep].float() / 127.5 - 1, "subject": cache["subject"][keep]}
    if with_label:
        label = cache["label"][keep]
        if (label == CACHE_NO_LABEL).all():
            raise DataError(path, f"has no {modality.upper()} label for {', '.join(wanted)}: none of them kept a pseudo-label")
        out["label"] = torch.where(label == CACHE_NO_LABEL, NO_LABEL, label.float())
    return out


class UnpairedSlices(Dataset):
    """Unpaired (CT slice, MR slice) items for stage 1, reproducible per epoch.

    Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a run resumed at an epoch
    boundary sees exactly the batches an uninterrupted run would. The trainer calls
    ``set_epoch`` at the start of every epoch.

    Args:
        source: CT slices (N, 1, S, S).
        target: MR slices (M, 1, S, S).
        length: items per epoch.
        seed: random seed.
        source_label: the CT slices' labels (N, 1, S, S), item key ``ct_label`` (the task-aware
            content space), or ``None``.
        target_label: the MR slices' pseudo-labels (M, 1, S, S; ``NO_LABEL`` on the slices of MR without one), item key ``mr_label``, or
            ``None``: masks of teachers trained without MR labels (what the runner and
            scripts/self_train.py write); MR ground truth here would make stage 1 supervised.
    """

    def __init__(self, source: torch.Tensor, target: torch.Tensor, length: int, seed: int = 0,
                 source_label: torch.Tensor | None = None, target_label: torch.Tensor | None = None) -> None:
        if source_label is not None and len(source_label) != len(source):
            raise ValueError(f"{len(source_label)} CT labels for {len(source)} CT slices")
        if target_label is not None and len(target_label) != len(target):
            raise ValueError(f"{len(target_label)} MR pseudo-labels for {len(target)} MR slices")
        self.source, self.target, self.length, self.seed = source, target, length, seed
        self.source_label, self.target_label = source_label, target_label
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.source_index = rng.integers(len(self.source), size=self.length)
        self.target_index = rng.integers(len(self.target), size=self.length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"ct": self.source[self.source_index[i]], "mr": self.target[self.target_index[i]]}
        if self.source_label is not None:
            item["ct_label"] = self.source_label[self.source_index[i]]
        if self.target_label is not None:
            item["mr_label"] = self.target_label[self.target_index[i]]
        return item


def evenly_spaced(slices: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` items spread over the set (all if fewer): a fixed validation sample."""
    index = np.linspace(0, len(slices) - 1, num=min(n, len(slices))).round().astype(int)
    return slices[index]

