"""Subject-wise folds of a datalist: which subjects each fold holds out, and its datalist.

A subject's images (e.g. its MR phases) always fall in the same fold, so no slice of a held-out
patient is ever seen in training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from bundle.data.datalist import read_datalist
from bundle.errors import DataError

__all__ = ["LABELLED_MR_SECTIONS", "subject", "labelled_entries", "subject_folds", "fold_datalist"]

LABELLED_MR_SECTIONS = ("target_labelled", "target_test")


def subject(entry: dict) -> str:
    """A datalist entry's subject: its ``subject`` key, else its image's file name."""
    return entry.get("subject", Path(entry["image"]).name)


def labelled_entries(datalist: Path, sections: tuple[str, ...], modality: str) -> list[dict]:
    """The labelled entries of ``sections`` (each image once), paths absolute."""
    raw = json.loads(Path(datalist).read_text())
    entries, seen = [], set()
    for section in sections:
        if raw.get(section):
            for entry in read_datalist(datalist, section):
                if "label" in entry and entry["image"] not in seen:
                    seen.add(entry["image"])
                    entries.append(entry)
    if not entries:
        raise DataError(datalist, f"has no labelled {modality.upper()} entries in {', '.join(sections)}: "
                                  "the experiments test on held-out labelled subjects of both modalities")
    return entries


def subject_folds(entries: list[dict], folds: int, seed: int, source: str | Path = "datalist") -> list[list[str]]:
    """Subjects split into ``folds`` disjoint folds of near-equal size (shuffled with ``seed``);
    all images of a subject (e.g. its MR phases) fall in the same fold."""
    subjects = sorted({subject(e) for e in entries})
    if not 2 <= folds <= len(subjects):
        raise DataError(source, f"has {len(subjects)} subjects: --folds must be between 2 and {len(subjects)}, got {folds}")
    random.Random(seed).shuffle(subjects)
    return [sorted(subjects[i::folds]) for i in range(folds)]


def fold_datalist(ct: list[dict], mr: list[dict], ct_test: list[str], mr_test: list[str], val_subjects: int = 0, seed: int = 0) -> dict:
    """The fold's sections; with ``val_subjects``, that many training subjects of each modality
    move to ``source_val`` / ``target_val`` (model selection; the held-out test stays unseen)."""
    def split(entries, test):
        return [e for e in entries if subject(e) not in test], [e for e in entries if subject(e) in test]

    ct_train, ct_held = split(ct, ct_test)
    mr_train, mr_held = split(mr, mr_test)
    sections = {}
    for name, entries in (("source", ct_train), ("target", mr_train)):
        subjects = sorted({subject(e) for e in entries})
        val = random.Random(seed).sample(subjects, max(0, min(val_subjects, len(subjects) - 1)))  # one subject always trains
        sections[name], sections[f"{name}_val"] = split(entries, val)
    mr_train = sections.pop("target")
    return {"source": sections["source"], "source_val": sections["source_val"], "source_test": ct_held,
            "target": [{k: v for k, v in e.items() if k not in ("label", "organs")} for e in mr_train],  # unlabelled
            "target_labelled": mr_train, "target_val": sections["target_val"], "target_test": mr_held}
