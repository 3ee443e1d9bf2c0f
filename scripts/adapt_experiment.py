"""Cohort adaptation measured on the dev patients' folds (configs/adapt.yaml; docs/RESULTS.md, "Cohort adaptation").

    python scripts/adapt_experiment.py --run RUN/dadr --model unet_ct_synth --out OUT [--variants clean,dark_liver] \\
        [--max_minutes 10] [--max_epochs N] [--source False] [--fallback unet_ct_synth] [--overrides "{'learning_rate': 1e-3}"]

RUN is an experiment runner's folder of folds (``scripts/experiments.py ... --experiments dadr --stress True``):
``RUN/fold_k/datalist.json`` splits the MR into the fold's training patients (``target``, unlabelled) and its held-out
ones (``target_test``); ``RUN/fold_k/MODEL/model.pt`` is a model that never saw that fold's held-out patients. For each
fold and variant (``clean``: the images as they are; a robustness-suite variant: ``RUN/../stress_suite/<variant>``), the
model adapts to the fold's training patients' images (their labels are never read), then the adapted and the
unadapted model are scored on those patients (the unsupervised-adaptation setting) and on the held-out ones (unseen),
per patient, with the adaptation's wall time; with ``--fallback F`` (a runner model of each fold, e.g. ``unet_ct_synth``)
also the unseen patients under every suite variant, by the model adapted to the clean images alone and as the first
UNet of a fallback pair with F (``inference.yaml --adaptation fallback``); where adapt refuses (no case trusted) the model stays as it was and
the row says so. ``--source True`` also trains on the datalist's labelled CT; ``--overrides`` are more of adapt.yaml's values.
Writes ``OUT/results.csv`` and ``OUT/results.md``; a finished step is not run again.
"""

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from bundle.atomic import atomic_outputs
from bundle.cli import flag, run_cli
from bundle.data.datalist import read_datalist
from bundle.errors import DataError, unwrap_data_error
from bundle.folds import subject
from bundle.pipeline import CONFIGS, run_bundle, run_evaluation
from bundle.networks import join_fallback
from bundle.stress import VARIANTS, suite_datalist


def _entries(fold: Path, section: str, variant: str, out: Path) -> Path:
    """A datalist of the fold's ``section`` patients (labels for scoring), as they are or under ``variant``."""
    entries = read_datalist(fold / "datalist.json", "target_labelled" if section == "target" else section)
    if variant == "clean":
        path = out / f"{section}.json"
        with atomic_outputs([path]) as (tmp,):
            tmp.write_text(json.dumps({"target_test": entries}, indent=2))
        return path
    suite = fold.parents[1] / "stress_suite" / variant / "datalist.json"
    if not suite.is_file():
        raise DataError(suite, "is missing: run the experiments with --stress True first")
    return suite_datalist(suite, [subject(e) for e in entries], out / f"{section}.json")


def _scores(datalist: Path, model: Path, out: Path, sizes: dict) -> list[dict]:
    metrics = out / "metrics.json"
    if not metrics.is_file():
        run_evaluation(datalist, model, out, sizes, adaptation="auto", modality="mr", eval_section="target_test")
    return json.loads(metrics.read_text())["subjects"]


def _suite_of_the_adapted(folds: list[Path], model: str, fallback: str, out: str | Path, sizes: dict) -> list[str]:
    """The unseen patients of each fold under every robustness-suite variant, scored by the model adapted to the fold's
    clean training MR, alone and as the first UNet of a fallback pair with ``fallback`` (a runner model of the fold),
    beside the unadapted model and pair: the table lines."""
    scores: dict[tuple[str, str], list[float]] = {}
    for fold in folds:
        base = Path(out) / fold.name / "clean"
        adapted = fold / model / "model.pt" if (base / "nothing_trusted").is_file() else base / "adapted" / "model.pt"
        pair = base / "pair.pt"
        if not pair.is_file():
            with atomic_outputs([pair]) as (tmp,):
                torch.save(join_fallback(adapted, fold / fallback / "model.pt"), tmp)
        unadapted_pair = base / "unadapted_pair.pt"
        if not unadapted_pair.is_file():
            with atomic_outputs([unadapted_pair]) as (tmp,):
                torch.save(join_fallback(fold / model / "model.pt", fold / fallback / "model.pt"), tmp)
        for variant in ("clean", *VARIANTS):
            folder = base / "suite" / variant
            folder.mkdir(parents=True, exist_ok=True)
            held_out = _entries(fold, "target_test", variant, folder)
            for name, path in (("unadapted", fold / model / "model.pt"), ("adapted", adapted), ("unadapted + fallback", unadapted_pair),
                               ("adapted + fallback", pair)):
                scores.setdefault((name, variant), []).extend(r["dice"] for r in _scores(held_out, path, folder / name.replace(" + ", "_"), sizes))
    columns = ("clean", *VARIANTS)
    lines = ["", f"Unseen patients under the robustness suite (both folds): {model} adapted to the fold's clean training MR, and as the "
             f"first UNet of a fallback pair with {fallback}; Dice mean (std)", "",
             "| model | " + " | ".join(columns) + " | mean of the variants |", "|---" * (len(columns) + 2) + "|"]
    for name in ("unadapted", "adapted", "unadapted + fallback", "adapted + fallback"):
        cells = [f"{np.mean(scores[name, v]):.3f} ({np.std(scores[name, v]):.3f})" for v in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean([np.mean(scores[name, v]) for v in VARIANTS]):.3f} |")
    return lines


def adapt_experiment(run: str, model: str, out: str, variants: str | tuple = ("clean", "dark_liver"), max_minutes: float = 10.0,
                     source: bool = False, image_size: int = 128, max_epochs: int | None = None, fallback: str | None = None,
                     overrides: dict | None = None) -> None:
    """Adapt each fold's MODEL to the fold's training MR (per variant) and score it against the unadapted model."""
    run, out, sizes = Path(run).expanduser(), Path(out).expanduser(), {"image_size": image_size}
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    folds = sorted(run.glob("fold_*"))
    if not folds:
        raise DataError(run, "holds no fold_* folder of the experiment runner")
    rows = []
    for fold in folds:
        weights = fold / model / "model.pt"
        if not weights.is_file():
            raise DataError(weights, "is missing: train the model in the runner first")
        for variant in names:
            base = out / fold.name / variant
            base.mkdir(parents=True, exist_ok=True)
            lists = {section: _entries(fold, section, variant, base) for section in ("target", "target_test")}
            cohort = base / "cohort"
            cohort.mkdir(exist_ok=True)
            for entry in json.loads(lists["target"].read_text())["target_test"]:  # the images alone: labels stay out of reach
                link = cohort / Path(entry["image"]).name
                if not link.exists():
                    link.symlink_to(Path(entry["image"]).resolve())
            adapted = base / "adapted"
            if not (adapted / "adapt.json").is_file() and not (base / "nothing_trusted").is_file():
                start = time.perf_counter()
                try:
                    run_bundle("adapt", config_file=str(CONFIGS / "adapt.yaml"), bundle_root=str(CONFIGS.parent), dataset_dir=str(cohort),
                               output_dir=str(adapted), model_path=str(weights), max_minutes=max_minutes,
                               **({} if max_epochs is None else {"max_epochs": int(max_epochs)}),
                               datalist=str(fold / "datalist.json") if flag(source, "source") else None, **sizes, **(overrides or {}))
                except Exception as e:  # MONAI's config evaluation wraps the DataError adapt raises
                    if "nothing to adapt on" not in str(unwrap_data_error(e)):
                        raise
                    (base / "nothing_trusted").write_text(str(e))  # adapt refused: the model stays as it was
                (base / "adapt_seconds").write_text(f"{time.perf_counter() - start:.1f}")
            seconds = float((base / "adapt_seconds").read_text()) if (base / "adapt_seconds").is_file() else None
            refused = (base / "nothing_trusted").is_file()
            for name, path in (("unadapted", weights), ("adapted", weights if refused else adapted / "model.pt")):
                for section, setting in (("target", "adapted patients"), ("target_test", "unseen patients")):
                    for row in _scores(lists[section], path, base / f"{name}_{section}", sizes):
                        rows.append({"fold": fold.name, "variant": variant, "model": name, "setting": setting, "subject": row["subject"],
                                     "dice": row["dice"], "adapt_seconds": seconds if name == "adapted" else None,
                                     "nothing_trusted": refused})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["fold", "variant", "model", "setting", "subject", "dice", "adapt_seconds", "nothing_trusted"])
    writer.writeheader()
    writer.writerows(rows)
    lines = [f"Cohort adaptation of {model} ({run}), max {max_minutes} min, max_epochs {max_epochs or 'adapt.yaml'}, "
             f"source CT: {flag(source, 'source')}, overrides: {overrides or {}}; Dice mean (std)", "",
             "| variant | setting | fold | unadapted | adapted | adapted - unadapted | adapt min |", "|---|---|---|---|---|---|---|"]
    for variant in names:
        for setting in ("adapted patients", "unseen patients"):
            for fold in [f.name for f in folds] + ["all"]:
                pick = lambda m: [r["dice"] for r in rows if r["variant"] == variant and r["setting"] == setting and r["model"] == m
                                  and (fold == "all" or r["fold"] == fold)]
                before, after = pick("unadapted"), pick("adapted")
                minutes = [r["adapt_seconds"] / 60 for r in rows if r["variant"] == variant and r["model"] == "adapted" and r["adapt_seconds"]
                           and (fold == "all" or r["fold"] == fold)]
                lines.append(f"| {variant} | {setting} | {fold} | {np.mean(before):.3f} ({np.std(before):.3f}) | {np.mean(after):.3f} "
                             f"({np.std(after):.3f}) | {np.mean(after) - np.mean(before):+.3f} | {np.mean(minutes):.1f} |")
    if fallback is not None:
        lines += _suite_of_the_adapted(folds, model, fallback, out, sizes)
    with atomic_outputs([out / "results.csv", out / "results.md"]) as (tmp_csv, tmp_md):
        tmp_csv.write_text(text.getvalue())
        tmp_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_cli(adapt_experiment)
