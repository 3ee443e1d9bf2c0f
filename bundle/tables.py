"""The result tables of the experiment runner: Dice mean (std) per method and test modality,
the paper's (or a reference) figure beside ours, train time per fold, and per-image Dice."""

from __future__ import annotations

import numpy as np

from bundle.data.readers import case_name

__all__ = ["TABLES", "tables"]

# (title, experiment, test modalities, rows: (label, model, the paper's Dice mean (std) per test modality))
TABLES = [
    ("Table 1: liver segmentation of the MR target with and without domain adaptation", "da", ("mr",), [
        ("UNet w/o DA (trained on CT)", "unet_ct", {"mr": "0.26 (0.07)"}),
        ("DACGAN (UNet on CT->MR)", "dacgan", {"mr": "0.72 (0.05)"}),
        ("DADR (UNet on content-only CT)", "dadr", {"mr": "0.81 (0.03)"}),
        ("supervised MR (upper bound)", "unet_mr", {"mr": "0.869 (0.044)"}),
    ]),
    ("Table 2: joint-domain learning", "da", ("ct", "mr"), [
        ("CT trained", "unet_ct", {"ct": "0.901 (0.020)", "mr": "0.260 (0.072)"}),
        ("MR trained", "unet_mr", {"ct": "0.134 (0.091)", "mr": "0.869 (0.044)"}),
        ("Joint CT&MR (DADR, content-only)", "joint", {"ct": "0.912 (0.012)", "mr": "0.891 (0.040)"}),
    ]),
    ("Table 3: domain adaptation to a multi-phasic MR target", "multiphase", ("mr",), [
        ("DACGAN", "dacgan", {"mr": "0.52 (0.06)"}),
        ("DADR", "dadr", {"mr": "0.74 (0.04)"}),
    ]),
    ("Supervised MR upper bound (folds over the MR subjects)", "mr_bound", ("mr",), [
        ("supervised MR", "unet_mr", {"mr": "0.869 (0.044)"}),
    ]),
    ("CT-trained UNets without adaptation (folds over the CT subjects; MR: every image, by each fold's model)", "ct_only", ("ct", "mr"), [
        ("CT trained", "unet_ct", {"ct": "0.901 (0.020)", "mr": "0.260 (0.072)"}),
        ("CT trained, appearance randomisation", "unet_ct_rand", {"ct": "-", "mr": "-"}),
    ]),
    ("DADR alone and our additions (one stage 1 per fold; the paper's figure beside)", "dadr", ("mr",), [
        ("DADR (UNet on content-only CT)", "dadr", {"mr": "0.81 (0.03)"}),
        ("+ appearance randomisation", "dadr_rand", {"mr": "-"}),
        ("+ appearance randomisation + self-training", "dadr_rand_st", {"mr": "-"}),
        ("CT trained, appearance randomisation (no content path; a teacher below)", "unet_ct_rand", {"mr": "-"}),
        ("DACGAN (UNet on CT->MR; a teacher below)", "dacgan", {"mr": "0.72 (0.05)"}),
        ("DADR + appearance randomisation + self-training where those two agree", "dadr_agreement_st", {"mr": "-"}),
        ("self-training where those two agree, without the content path (UNet on the images)", "agreement_st", {"mr": "-"}),
        ("dual path: mean of the two self-trained UNets' probabilities (content-only image, image)", "dadr_dual_st", {"mr": "-"}),
        ("dual path: mean of the DADR student's and the randomised CT UNet's probabilities", "dadr_dual_rand", {"mr": "-"}),
        ("CT trained, no adaptation", "unet_ct", {"mr": "0.26 (0.07)"}),
        ("CT trained on the synthetic source (random intensity per tissue)", "unet_ct_synth", {"mr": "-"}),
        ("the same with the liver drawn darkest or brightest in 30% of the slices (synthesis_liver_extremes 0.3)", "unet_ct_synth_extremes", {"mr": "-"}),
        ("+ appearance randomisation", "unet_ct_synth_rand", {"mr": "-"}),
        ("synthetic source + self-training where it and the randomised CT UNet agree", "synth_st", {"mr": "-"}),
        ("+ a second round of self-training (the first student its teacher)", "synth_st2", {"mr": "-"}),
        ("fallback pair: the randomised CT UNet, the synthetic-source UNet where its mask fails the quality checks", "rand_synth_fallback", {"mr": "-"}),
        ("DADR diverse style transfer (UNet on CT->MR, random MR styles of stage 1; a teacher below)", "dadr_style", {"mr": "-"}),
        ("+ appearance randomisation + self-training where it and the randomised CT UNet agree", "dadr_style_st", {"mr": "-"}),
        ("supervised MR (upper bound; MR labels)", "unet_mr", {"mr": "0.869 (0.044)"}),
        ("supervised content-only MR (the most stage 2 can get from this stage 1; MR labels)", "dadr_mr", {"mr": "-"}),
    ]),
    ("Self-training on the unlabelled training MR, without adaptation and with DACGAN as the teacher (every fold's CT: all; MR folds)", "self_training", ("mr",), [
        ("CT trained, appearance randomisation", "unet_ct_rand", {"mr": "-"}),
        ("+ self-training", "unet_ct_rand_st", {"mr": "-"}),
        ("+ a second round of self-training", "unet_ct_rand_st2", {"mr": "-"}),
        ("DACGAN (UNet on CT->MR)", "dacgan", {"mr": "0.72 (0.05)"}),
        ("+ self-training (CT->MR and MR pseudo-labelled by DACGAN)", "dacgan_st", {"mr": "-"}),
        ("self-training where both teachers agree (randomised CT + MR pseudo-labelled by both)", "agreement_st", {"mr": "-"}),
    ]),
]

def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ({np.std(values):.3f})" if values else "n/a"


def _image_dice(rows: list[dict], model: str, test: str) -> dict[str, float]:
    """Dice per test image of ``model``; an image tested by several folds' models (the MR of
    ``ct_only``) gets the mean of its Dice over them."""
    by_image: dict[str, list[float]] = {}
    for r in rows:
        if r["model"] == model and r["test"] == test and np.isfinite(r["dice"]):
            by_image.setdefault(r["image"], []).append(r["dice"])
    return {image: float(np.mean(d)) for image, d in by_image.items()}


def _fold_minutes(rows: list[dict], key: str) -> float | None:
    """Mean over the folds of the wall time ``key`` (seconds) of ``rows``, in minutes; ``None`` if none recorded it."""
    known = [v for v in {r["fold"]: r.get(key) for r in rows}.values() if v is not None]
    return float(np.mean(known)) / 60 if known else None


def _train_minutes(rows: list[dict], model: str) -> str:
    """Mean wall time of ``model``'s training per fold, in minutes (a resumed training's runs together)."""
    minutes = _fold_minutes([r for r in rows if r["model"] == model], "train_seconds")
    return "n/a" if minutes is None else f"{minutes:.1f}"


def _shared_minutes(rows: list[dict]) -> str:
    """Mean wall time per fold of the trainings a fold's models share (stage 1, the CycleGAN),
    which the per-model minutes leave out; "" when none recorded it."""
    parts = [f"{label} {minutes:.1f}" for key, label in (("stage1_seconds", "stage 1"), ("cyclegan_seconds", "CycleGAN"))
             if (minutes := _fold_minutes(rows, key)) is not None]
    return f"Trained once per fold and shared, min/fold: {', '.join(parts)} (not in train min/fold above)." if parts else ""


def tables(rows_by_experiment: dict[str, list[dict]]) -> tuple[dict, str]:
    """The tables from the per-image rows: Dice mean (std) over the held-out images, the
    paper's (or a reference) figure beside ours, and per-patient Dice of every MR test."""
    tables, lines = {}, []
    for title, experiment, tests, table_rows in TABLES:
        rows = rows_by_experiment.get(experiment)
        if not rows:
            continue
        header = "| method | " + " | ".join(f"{t.upper()} tested: ours | {t.upper()} tested: paper" for t in tests) + " | train min/fold |"
        lines += [f"### {title}", "", header, "|---" * (2 + 2 * len(tests)) + "|"]
        tables[title] = {}
        table_rows = [row for row in table_rows if any(r["model"] == row[1] for r in rows)]  # not the models --models left out
        for label, model, paper in table_rows:
            cells, entry = [], {}
            for test in tests:
                dice = list(_image_dice(rows, model, test).values())
                entry[test] = {"dice_mean": float(np.mean(dice)) if dice else None, "dice_std": float(np.std(dice)) if dice else None,
                               "n": len(dice), "paper": paper[test]}
                cells += [_mean_std(dice), paper[test]]
            tables[title][label] = entry
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_train_minutes(rows, model)} |")
        lines.append("")
        if shared := _shared_minutes(rows):
            lines += [shared, ""]
        mr_columns = [(label, model) for label, model, _ in table_rows if "mr" in tests]
        per_image = {label: _image_dice(rows, model, "mr") for label, model in mr_columns}
        images = sorted({i for d in per_image.values() for i in d}, key=lambda i: (len(i), i))
        if images:
            lines += ["Per MR image (Dice):", "", "| image | " + " | ".join(label for label, _ in mr_columns) + " |",
                      "|---" * (1 + len(mr_columns)) + "|"]
            lines += [f"| {case_name(i)} | " + " | ".join(f"{per_image[label][i]:.3f}" if i in per_image[label] else "-" for label, _ in mr_columns) + " |"
                      for i in images]
            lines.append("")
        if stress := _stress_lines(rows, [(label, model) for label, model, _ in table_rows]):
            lines += stress
    return tables, "\n".join(lines)


def _stress_lines(rows: list[dict], models: list[tuple[str, str]]) -> list[str]:
    """The robustness suite's table (``mr/<variant>`` rows): Dice mean (std) per model, clean and per
    variant, and the lowest patient over all of them; empty when the run had no suite."""
    variants = sorted({r["test"] for r in rows if r["test"].startswith("mr/")})
    if not variants:
        return []
    lines = ["Robustness suite (the same held-out MR under each shift, bundle/stress.py): Dice mean (std); lowest: the lowest patient of any column", "",
             "| method | clean | " + " | ".join(v.split("/", 1)[1] for v in variants) + " | mean of the variants | lowest |",
             "|---" * (4 + len(variants)) + "|"]
    for label, model in models:
        columns = [list(_image_dice(rows, model, test).values()) for test in ["mr", *variants]]
        if not any(columns):
            continue
        means = [float(np.mean(c)) for c in columns[1:] if c]
        lowest = min(min(c) for c in columns if c)
        lines.append(f"| {label} | " + " | ".join(_mean_std(c) for c in columns)
                     + f" | {np.mean(means):.3f} | {lowest:.3f} |")
    return lines + [""]
