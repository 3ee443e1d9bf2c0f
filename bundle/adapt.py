"""Cohort adaptation (not in the paper): the model self-trained on a user's own unlabelled MR, no labels, no CT needed.

Unsupervised adaptation promises a model fitted to the target scans a user has. Retraining the
whole recipe needs our CT and hours; here the model adapts itself in minutes: it segments the
cohort (with the test-time contrast ensemble), keeps as pseudo-labels only what the quality
checks trust, and fine-tunes its UNet(s) on them.

- A case is trusted when inference raises no flag that its mask may be wrong (``inference.yaml``
  ``quality``: plausible volume, confidence, the dual path's agreement...; a liver cut by the
  field of view is still a good mask of what the scan holds), and, for a fallback pair, when its
  first UNet made the mask. An untrusted case contributes nothing.
- Inside a trusted case, a voxel whose ensemble entropy is above ``voxel_entropy`` is left out
  of the loss (``IGNORE``), not called background: the liver's uncertain border and the
  structures the contrasts disagree on do not teach the model its own doubts.
- With a datalist whose ``source`` section holds labelled CT, those slices (re-rendered by the
  contrast-agnostic source where they have label maps) train beside the cohort, so the model
  keeps what it knew.

The network, preprocessing and quality checks are ``inference.yaml``'s (parsed with the same
sizes), so the adapted ``model.pt`` is what inference and MONAI Label run, as it is.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from torch.utils.data import Dataset

from bundle.atomic import atomic_outputs
from bundle.data.datalist import read_datalist
from bundle.data.readers import case_name
from bundle.data.slices import volume_slices
from bundle.errors import DataError, unwrap_data_error
from bundle.inference import find_volumes
from bundle.networks.segmenter import load_model
from bundle.quality import failed, write_summary

__all__ = ["IGNORE", "bundle_part", "check_cohort", "PseudoLabels", "CohortSlices", "finished", "finish"]

logger = logging.getLogger(__name__)

IGNORE = 255  # the label of a voxel left out of the loss (IgnoringDiceCELoss's ignore_index)
LOG = "adapt.json"


def bundle_part(bundle_root: str | Path, config: str, part: str, overrides: dict) -> object:
    """``part`` of ``<bundle_root>/configs/<config>`` under ``overrides`` (sizes, model, folders), with the
    model's weights loaded when ``part`` is inference's network or runner: adaptation runs inference's own
    pieces (and stage 2's augmentation), not copies of them."""
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root) / "configs" / config))
    parser.update(overrides)
    built = parser.get_parsed_content(part)
    if part == "network":
        load_model(built, parser.get_parsed_content("model_path"))
    elif part == "segment_volumes":
        load_model(built.network, parser.get_parsed_content("model_path"))
    return built


def check_cohort(dataset_dir: str | Path, preprocessing) -> list[Path]:
    """The cohort's volumes, each read and checked by inference's preprocessing before any work: an
    empty folder or an unreadable case is refused by name, and nothing is written."""
    cases = find_volumes(dataset_dir)
    for path in cases:
        try:
            preprocessing({"image": str(path)})
        except Exception as e:
            error = unwrap_data_error(e)
            raise (error if isinstance(error, DataError) else DataError(path, f"cannot be read as a volume: {error}")) from e
    logger.info("cohort: %d volumes in %s", len(cases), dataset_dir)
    return cases


class PseudoLabels:
    """The cohort segmented by the model with its contrast ensemble (``segmenter``: inference's
    ``SegmentVolumes`` with ``uncertainty``, writing into ``out``), then per case a pseudo-label
    (``<case>_pseudo.nii.gz``: 0 background, 1 liver, ``IGNORE`` where the ensemble's entropy is
    above ``voxel_entropy``) where the case raised no flag of a failed mask (``quality.failed``). Written once: a resumed run
    reuses them (``out/pseudo_labels.json``)."""

    def __init__(self, segmenter, cases: list[Path], out: str | Path, voxel_entropy: float = 0.25) -> None:
        self.segmenter, self.cases, self.out, self.voxel_entropy = segmenter, list(cases), Path(out), float(voxel_entropy)
        self.cases_log: list[dict] = []
        self.started = time.perf_counter()  # the run's start: the cohort was checked just before

    def run(self) -> list[dict]:
        """Write (or reuse) the pseudo-labels; returns the trusted cases (``image``, ``label``) and raises, leaving the
        model as it was, when none is trusted."""
        record = self.out / "pseudo_labels.json"
        if record.is_file():
            self.cases_log = json.loads(record.read_text())
            logger.info("pseudo-labels of an earlier run reused: %s", record)
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            rows = []
            for path in self.cases:
                outputs, affine, quality = self.segmenter.predict(path)
                name = case_name(path)
                entry = {"case": name, "file": str(path), **{k: v for k, v in quality.items() if k != "thumbnails"}}
                entry["trusted"] = not failed(quality["flags"]) and not quality.get("fallback")  # a fallback's mask is the weaker model's
                if entry["trusted"]:
                    label = np.where(outputs["uncertainty"] > self.voxel_entropy, IGNORE, outputs["liver"]).astype(np.uint8)
                    entry["trusted_voxels"] = round(float((label != IGNORE).mean()), 4)
                    entry["label"] = str(self.out / f"{name}_pseudo.nii.gz")
                    with atomic_outputs([Path(entry["label"])]) as (tmp,):
                        image = nib.Nifti1Image(label, affine)
                        image.set_data_dtype(np.uint8)
                        nib.save(image, str(tmp))
                reasons = failed(quality["flags"]) + (["the fallback UNet made its mask"] if quality.get("fallback") else [])
                logger.info("%s: %s", name, "trusted" if entry["trusted"] else "not trusted (" + "; ".join(reasons) + ")")
                rows.append(entry)
            write_summary(rows, self.out / "summary.csv")
            with atomic_outputs([record]) as (tmp,):
                tmp.write_text(json.dumps(rows, indent=2))
            self.cases_log = rows
        trusted = [{"image": r["file"], "label": r["label"], "subject": r["case"]} for r in self.cases_log if r["trusted"]]
        if not trusted:
            raise DataError(self.out.parent, f"no case of the {len(self.cases_log)} passed the quality checks (their flags: {record}): "
                                             "nothing to adapt on; the model is unchanged")
        logger.info("pseudo-labels: %d of %d cases trusted", len(trusted), len(self.cases_log))
        return trusted


class CohortSlices(Dataset):
    """Training slices of the trusted cohort cases with their pseudo-labels (``IGNORE`` kept), slices
    with no trusted liver-or-background voxel left out; and, with ``datalist``, its ``source`` CT with
    their liver masks (and their label maps as ``tissues`` where the entries have ``labels``: the
    augmentation's synthetic source re-renders them).

    Args:
        trusted: :meth:`PseudoLabels.run`'s entries.
        image_size, ct_window, mr_percentiles, context_slices: inference's preprocessing.
        datalist: a datalist with a ``source`` section, or ``None``.
        transform: dict transform (augmentation) of every item.
    """

    def __init__(self, trusted: list[dict], image_size: int, datalist: str | Path | None = None, transform=None, **preprocessing) -> None:
        mr = volume_slices(trusted, "mr", image_size, with_label=True, source="cohort", **preprocessing)
        keep = (mr["label"] != IGNORE).flatten(1).any(dim=1)
        images, labels, tissues = [mr["image"][keep]], [mr["label"][keep]], []
        self.counts = {"cohort_slices": int(keep.sum())}
        if datalist is not None:
            source = read_datalist(datalist, "source")
            ct = volume_slices(source, "ct", image_size, with_label=True, source=f"{datalist} [source]", **preprocessing)
            if all("labels" in e for e in source):
                maps = volume_slices([{**e, "label": e["labels"]} for e in source], "ct", image_size, with_label=True, **preprocessing)
                tissues = [maps["label"].to(torch.uint8)]
            images.insert(0, ct["image"])
            labels.insert(0, ct["label"])
            self.counts["source_slices"] = len(ct["image"])
        self.images, self.labels = torch.cat(images), torch.cat(labels)
        self.tissues = tissues[0] if tissues else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        item = {"image": self.images[i], "label": self.labels[i]}
        if self.tissues is not None and i < len(self.tissues):  # the source CT comes first
            item["tissues"] = self.tissues[i]
        return self.transform(item) if self.transform is not None else item


def finished(output_dir: str | Path) -> bool:
    """Whether an adaptation ran to its end in ``output_dir`` (its log is written last): run again, it only says so."""
    done = (Path(output_dir) / LOG).is_file()
    if done:
        logger.info("%s: adapted before (%s); use another --output_dir to adapt again", output_dir, Path(output_dir) / LOG)
    return done


def finish(pseudo: PseudoLabels, dataset: CohortSlices, model_path: str | Path, adapted: str | Path, segmenter, output_dir: str | Path) -> dict:
    """After training: the cohort segmented by the adapted model (``segmenter``: inference writing
    masks, ``summary.csv`` and ``report.html`` into ``output_dir/masks``) and ``output_dir/adapt.json``:
    what the model was adapted from and on, each case's trust and flags, the slices used, the minutes."""
    masks = segmenter()
    log = {"adapted_from": str(model_path), "model": str(adapted), "cases": pseudo.cases_log, **dataset.counts,
           "trusted_cases": sum(r["trusted"] for r in pseudo.cases_log), "minutes": round((time.perf_counter() - pseudo.started) / 60, 2),
           "masks": masks}
    with atomic_outputs([Path(output_dir) / LOG]) as (tmp,):
        tmp.write_text(json.dumps(log, indent=2))
    logger.info("adapted on %d of %d cases in %.1f min: %s (masks in %s)", log["trusted_cases"], len(pseudo.cases_log), log["minutes"],
                adapted, Path(output_dir) / "masks")
    return log
