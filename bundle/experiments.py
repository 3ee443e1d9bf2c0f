"""The paper's experiments (section 3) as one resumable runner: subject-wise k-fold
cross-validation of DADR against its baselines, and the paper's three tables.

Experiment ``da`` (tables 1 and 2). In each fold the training folds' CT (labelled) and MR
(unlabelled) train the DRLModule and the CycleGAN; then five UNets, all the same network with
the same preprocessing, differ only in what they are trained on: CT images (no adaptation, the
lower bound), CT translated to MR by the CycleGAN (DACGAN), content-only CT (DADR), labelled MR
(the supervised upper bound), content-only CT and MR (joint-domain learning). They are tested
on the held-out MR fold and, for table 2, on the held-out CT fold.

Experiment ``multiphase`` (table 3): the same, with the MR target made of the three T1 phases
(``--multiphase_datalist``); DACGAN and DADR only.

Experiments ``mr_bound`` and ``ct_only`` (the bounds and the non-adaptive baselines): the
supervised MR upper bound in folds over the MR subjects only; and the CT-trained UNets, plain
and with appearance randomisation, in folds over the CT subjects only (``ct_folds``), each
fold's model tested on its held-out CT and on every MR image (no MR is used in their training).

Experiments ``dadr`` and ``self_training`` (issue "DADR that adapts"): one stage 1 per fold, shared
by DADR's stage-2 variants (content-only images, appearance randomisation, self-training, the
diverse style transfer of the CT to MR), by the non-adaptive and DACGAN teachers and students, and
by the supervised bounds on MR images and on content-only MR images (what stage 2 could reach).

Every step goes through the bundle's configs (``bundle.pipeline``) and leaves its output in
``out/<experiment>/fold_<k>/``; a step whose output exists is not run again, and a finished
fold (``results.json``) is not touched, so an interrupted run continues where it stopped; a later
run with more ``--models`` trains and tests only those.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from bundle.atomic import atomic_outputs
from bundle.checkpoint import training_seconds
from bundle.cli import flag
from bundle.data.readers import case_name
from bundle.data.datalist import read_datalist
from bundle.data.slices import volume_slices
from bundle.errors import DataError
from bundle.figures import adaptation_figure, slice_grid
from bundle.folds import LABELLED_MR_SECTIONS, fold_datalist, labelled_entries, subject, subject_folds
from bundle.networks.segmenter import join_dual_path, join_fallback
from bundle.pipeline import CONFIGS, run_cyclegan, run_evaluation, run_stage1, run_stage2
from bundle.precision import precision_that_runs
from bundle.self_training import PSEUDO_SECTION, pseudo_labelled_datalist
from bundle.stress import VARIANTS, make_stress_suite, suite_datalist
from bundle.tables import tables

__all__ = ["MODELS", "EXPERIMENTS", "run_experiments", "experiment_figures"]

logger = logging.getLogger(__name__)

# stage-2 models: configs/train.yaml overrides, and the inference adaptation that goes with them
MODELS = {
    "unet_ct": ({"adaptation": "none", "train_section": "source", "train_modality": "ct"}, "none"),
    "dacgan": ({"adaptation": "cyclegan", "train_section": "source", "train_modality": "ct"}, "none"),
    "dadr": ({"adaptation": "dadr", "train_section": "source", "train_modality": "ct"}, "dadr"),
    "unet_mr": ({"adaptation": "none", "train_section": "target_labelled", "train_modality": "mr"}, "none"),
    "dadr_mr": ({"adaptation": "dadr", "train_section": "target_labelled", "train_modality": "mr"}, "dadr"),  # content path's ceiling
    "joint": ({"adaptation": "dadr", "train_section": "source", "train_modality": "ct", "joint": True}, "dadr"),
    "unet_ct_rand": ({"adaptation": "none", "train_section": "source", "train_modality": "ct", "appearance_randomisation": True}, "none"),
    # the contrast-agnostic source (bundle/synthesis.py): CT slices re-rendered with a random intensity per tissue
    "unet_ct_synth": ({"adaptation": "none", "train_section": "source", "train_modality": "ct", "synthesis": True}, "none"),
    "unet_ct_synth_extremes": ({"adaptation": "none", "train_section": "source", "train_modality": "ct", "synthesis": True,
                                "synthesis_liver_extremes": 0.3}, "none"),  # + the liver drawn darkest or brightest in 30% of the slices
    "unet_ct_synth_rand": ({"adaptation": "none", "train_section": "source", "train_modality": "ct", "synthesis": True,
                            "appearance_randomisation": True}, "none"),
    "dadr_rand": ({"adaptation": "dadr", "train_section": "source", "train_modality": "ct", "appearance_randomisation": True}, "dadr"),
    # self-training: labelled CT + the fold's training MR pseudo-labelled by the TEACHERS model (bundle/self_training.py)
    "unet_ct_rand_st": ({"adaptation": "none", "train_section": "source", "train_modality": "ct", "appearance_randomisation": True,
                         "joint": True, "joint_section": PSEUDO_SECTION}, "none"),
    "dadr_rand_st": ({"adaptation": "dadr", "train_section": "source", "train_modality": "ct", "appearance_randomisation": True,
                      "joint": True, "joint_section": PSEUDO_SECTION}, "dadr"),
    "dacgan_st": ({"adaptation": "cyclegan", "train_section": "source", "train_modality": "ct", "joint": True,
                   "joint_section": PSEUDO_SECTION}, "none"),  # CT translated to MR + the MR pseudo-labelled by dacgan
    # DADR's diverse style transfer: CT translated to MR by stage 1 with random MR styles; MR segmented as it is
    "dadr_style": ({"adaptation": "dadr_style", "train_section": "source", "train_modality": "ct"}, "none"),
    "dadr_style_st": ({"adaptation": "dadr_style", "train_section": "source", "train_modality": "ct", "appearance_randomisation": True,
                       "joint": True, "joint_section": PSEUDO_SECTION}, "none"),  # + the MR where it and unet_ct_rand agree
}
MODELS["unet_ct_rand_st2"] = MODELS["unet_ct_rand_st"]  # a second round: the first round's student is its teacher
# the synthetic source + the training MR where the synthetic-source UNet and the randomised CT UNet agree; and a second round
MODELS["synth_st"] = ({**MODELS["unet_ct_synth"][0], "joint": True, "joint_section": PSEUDO_SECTION}, "none")
MODELS["synth_st2"] = MODELS["synth_st"]
MODELS["agreement_st"] = MODELS["unet_ct_rand_st"]  # taught where two teachers agree (bundle.self_training.agreed_pseudo_labels)
MODELS["dadr_agreement_st"] = MODELS["dadr_rand_st"]  # DADR's content path, its MR pseudo-labelled where those two teachers agree
# the paper's stage 1 (its eq. 1 and 3, lr 1e-4, no shared residual block), against our defaults in drl_train.yaml
PAPER_STAGE1 = {"content_adv_weight": 0.0, "shared_res": 0, "learning_rate": 1e-4, "adversarial": "log"}
TEACHERS = {"unet_ct_rand_st": ("unet_ct_rand",), "unet_ct_rand_st2": ("unet_ct_rand_st",), "dadr_rand_st": ("dadr_rand",),
            "dacgan_st": ("dacgan",), "agreement_st": ("unet_ct_rand", "dacgan"), "dadr_agreement_st": ("unet_ct_rand", "dacgan"),
            "dadr_style_st": ("unet_ct_rand", "dadr_style"), "synth_st": ("unet_ct_synth", "unet_ct_rand"),
            "synth_st2": ("synth_st",)}  # self-trained model -> the models whose masks it learns
STAGE1_TEACHERS = TEACHERS["agreement_st"]  # --stage1_pseudo_labels: stage 1 learns the MR where agreement_st's teachers agree
# the dual path (inference.yaml --adaptation dual): no training of its own, the weights of a content-path model and of a
# UNet on the images, joined (bundle.networks.join_dual_path); its wall time is theirs. Joined again (and tested again)
# when a member's weights differ from those it was joined from (their SHA-256 in its marker)
DUAL_PATH = {"dadr_dual_st": ("dadr_agreement_st", "agreement_st"),  # the two students of the same teachers
             "dadr_dual_rand": ("dadr_agreement_st", "unet_ct_rand")}  # the DADR student and its non-adaptive teacher
MODELS |= {dual: ({"adaptation": "dual"}, "dual") for dual in DUAL_PATH}
# a fallback pair (inference.yaml --adaptation fallback): the first UNet, and the second where the first's mask fails the
# quality checks; joined like the dual path (bundle.networks.join_fallback), no training of its own
FALLBACK = {"rand_synth_fallback": ("unet_ct_rand", "unet_ct_synth")}
MODELS |= {pair: ({"adaptation": "fallback"}, "fallback") for pair in FALLBACK}
# models trained on the CT alone (no MR, no stage 1 or CycleGAN): one training per CT set, shared by the folds that have it
SOURCE_ONLY = {m for m, (o, _) in MODELS.items() if o.get("adaptation") == "none" and o.get("train_section") == "source" and not o.get("joint")}
EXPERIMENTS = {  # model -> the held-out modalities it is tested on
    "da": {"unet_ct": ("mr", "ct"), "dacgan": ("mr",), "dadr": ("mr",), "unet_mr": ("mr", "ct"), "joint": ("mr", "ct")},
    "multiphase": {"dacgan": ("mr",), "dadr": ("mr",)},
    "mr_bound": {"unet_mr": ("mr",)},
    "ct_only": {"unet_ct": ("ct", "mr"), "unet_ct_rand": ("ct", "mr")},
    "dadr": {"dadr_rand": ("mr",), "dadr_rand_st": ("mr",), "dadr": ("mr",),  # our default and its ablations
             "unet_ct_rand": ("mr",), "dacgan": ("mr",), "dadr_agreement_st": ("mr",),  # and self-trained from stronger teachers
             "agreement_st": ("mr",), "dadr_dual_st": ("mr",),  # the same teachers' student on the images, and both paths averaged
             "dadr_dual_rand": ("mr",),  # the DADR student averaged with the randomised CT UNet (no second student to train)
             "unet_ct": ("mr",), "unet_ct_synth": ("mr",), "unet_ct_synth_extremes": ("mr",), "unet_ct_synth_rand": ("mr",),  # the synthetic source
             "synth_st": ("mr",), "synth_st2": ("mr",),  # the synthetic source self-trained on the MR, one and two rounds
             "rand_synth_fallback": ("mr",),  # the randomised CT UNet, the synthetic-source UNet where its mask fails the checks
             "dadr_style": ("mr",), "dadr_style_st": ("mr",),  # DADR's diverse style transfer, alone and self-trained
             "unet_mr": ("mr",), "dadr_mr": ("mr",)},  # supervised bounds: MR images, content-only MR images (stage 1's ceiling)
    "self_training": {"unet_ct_rand": ("mr",), "unet_ct_rand_st": ("mr",), "unet_ct_rand_st2": ("mr",),  # without adaptation, two rounds
                      "dacgan": ("mr",), "dacgan_st": ("mr",),  # and with the DACGAN baseline as the teacher
                      "agreement_st": ("mr",)},  # and with both teachers, where they agree
}
FOLDED = {"da": ("ct", "mr"), "multiphase": ("ct", "mr"), "mr_bound": ("mr",), "ct_only": ("ct",), "dadr": ("ct", "mr"),
          "self_training": ("ct", "mr")}  # the modalities each splits
TEST_SECTIONS = {"mr": "target_test", "ct": "source_test"}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([path]) as (tmp,):
        tmp.write_text(json.dumps(data, indent=2))


def _trained(model_dir: Path) -> bool:
    """Whether stage 2 ran to its end in ``model_dir``. ``model.pt`` alone does not tell:
    MONAI's ``CheckpointSaver`` also saves it when training is interrupted (and not atomically)."""
    return (model_dir / "trained").is_file()


def _stage2_overrides(model: str, settings: dict, sections: dict) -> dict:
    """configs/train.yaml overrides of ``model`` under the run's settings (amp, epoch length, and
    validation on the fold's validation subjects of the training modality, where it has any)."""
    overrides = dict(MODELS[model][0], amp=settings["amp"], iterations_per_epoch=settings["iterations_per_epoch"],
                     label_key="organs" if settings["organs"] else "label")
    if model in TEACHERS:
        overrides["joint_repeat"] = settings["pseudo_repeat"]
    modality = overrides["train_modality"]
    val_section = "source_val" if modality == "ct" else "target_val"
    if sections.get(val_section):
        overrides |= {"val_section": val_section, "val_modality": modality, "val_interval": max(1, settings["seg_epochs"] // 10)}
    return overrides


def _finished_rows(fold_dir: Path, models: dict) -> list[dict] | None:
    """The test rows of ``models`` from a fold that finished before (``results.json``); ``None`` if
    it did not, or if it finished without one of them (a model added by a later run)."""
    done = fold_dir / "results.json"
    if not done.is_file():
        return None
    rows = json.loads(done.read_text())
    return [r for r in rows if r["model"] in models] if set(models) <= {r["model"] for r in rows} else None


def _run_fold(fold_dir: Path, fold: int | str, models: dict, settings: dict) -> list[dict]:
    """Every step of one fold whose output is missing; returns the per-image test rows."""
    done = fold_dir / "results.json"
    if (finished := _finished_rows(fold_dir, models)) is not None:
        logger.info("%s: finished before, not recomputed", fold_dir)
        return finished
    datalist = fold_dir / "datalist.json"
    sections = json.loads(datalist.read_text())
    sizes = {"image_size": settings["image_size"], "dim": settings["dim"], "unet_channels": settings["unet_channels"],
             "context_slices": settings["context_slices"], "out_channels": 5 if settings["organs"] else 2}
    stage1 = {"task_weight": settings["task_weight"]} | (PAPER_STAGE1 if settings["paper_stage1"] else {})
    if settings["paper_stage1"]:
        sizes["shared_res"] = PAPER_STAGE1["shared_res"]  # the content path's shape, for stage 2 and inference too
    drl, cyclegan = fold_dir / "drl" / "drl.pt", fold_dir / "cyclegan" / "cyclegan.pt"
    adaptations = {MODELS[m][0]["adaptation"] for m in models}
    gan_sizes = {k: sizes[k] for k in ("image_size", "dim")}
    pseudo_stage1 = settings["stage1_pseudo_labels"] and bool(adaptations & {"dadr", "dadr_style"}) and not drl.is_file()
    if ("cyclegan" in adaptations or pseudo_stage1) and not cyclegan.is_file():
        run_cyclegan(fold_dir, cyclegan.parent, settings["cyclegan_iterations"], gan_sizes, resume=True, seed=settings["seed"], amp=settings["amp"])

    def train(model: str) -> dict:
        """Stage 2 of ``model`` unless it finished before; returns its train.yaml overrides."""
        model_dir = fold_dir / model
        if model in DUAL_PATH or model in FALLBACK:
            names, join = (DUAL_PATH[model], join_dual_path) if model in DUAL_PATH else (FALLBACK[model], join_fallback)
            members = [_model_path(fold_dir / m, train(m)) for m in names]
            joined_from = {m: hashlib.sha256(path.read_bytes()).hexdigest() for m, path in zip(names, members)}
            if _marker(model_dir).get("members") != joined_from:  # first join, or a member retrained since: join and test again
                if model_dir.exists():
                    shutil.rmtree(model_dir)
                model_dir.mkdir(parents=True)
                with atomic_outputs([model_dir / "model.pt"]) as (tmp,):
                    torch.save(join(*members), tmp)
                seconds = [_train_seconds(fold_dir / m) for m in names]
                precisions = {_marker(fold_dir / m).get("precision") for m in names}
                _write_json(model_dir / "trained", {"train_seconds": None if None in seconds else round(sum(seconds), 1), "members": joined_from,
                                                    "precision": precisions.pop() if len(precisions) == 1 else None})
            return {}
        overrides = _stage2_overrides(model, settings, sections)
        if not _trained(model_dir) and (twin := _trained_twin(fold_dir, model, sections)) is not None:
            _copy_trained(twin, model_dir)
        if not _trained(model_dir):
            start = time.perf_counter()
            if model in TEACHERS:
                overrides["datalist"] = str(_pseudo_datalist(fold_dir, model_dir, TEACHERS[model], sections, sizes, settings))
            run_stage2(fold_dir, model_dir, drl, settings["seg_epochs"], sizes, cyclegan_path=str(cyclegan), seed=settings["seed"],
                       **overrides)
            before = training_seconds(model_dir / "model.pt").get("before_this_run", 0.0)  # a resumed training's earlier runs
            _write_json(model_dir / "trained", {"train_seconds": round(time.perf_counter() - start + before, 1),
                                                "precision": precision_that_runs(settings["amp"])})
        return overrides

    if pseudo_stage1:  # the teachers first: their agreed masks of the training MR enter stage 1's task term
        pseudo = drl.parent / "datalist.json"  # written last (atomically): a resumed stage 1 keeps the MR it started with
        if not pseudo.is_file():
            for teacher in STAGE1_TEACHERS:
                train(teacher)
            pseudo = _pseudo_datalist(fold_dir, drl.parent, STAGE1_TEACHERS, sections, sizes, settings)
        kept = len(json.loads(pseudo.read_text())[PSEUDO_SECTION])
        logger.info("%s: stage 1 adapts to the %d training MR and segments the %d whose pseudo-labels passed the filters", fold_dir, len(sections["target"]), kept)
        stage1 |= {"datalist": str(pseudo), "target_pseudo_labels": True}
    if adaptations & {"dadr", "dadr_style"} and not drl.is_file():
        run_stage1(fold_dir, drl.parent, settings["drl_iterations"], gan_sizes, resume=True, seed=settings["seed"],
                   amp=settings["amp"], **stage1)
    rows = []
    shared = {f"{stage}_seconds": training_seconds(path).get("train_seconds") for stage, path in (("stage1", drl), ("cyclegan", cyclegan))}
    for model, tests in models.items():
        adaptation = MODELS[model][1]
        overrides = train(model)
        model_path = _model_path(fold_dir / model, overrides)
        marker = _marker(fold_dir / model)  # what its training recorded: wall time, precision
        for test in tests:
            if not sections.get(TEST_SECTIONS[test]):
                continue  # nothing of this modality held out (every CT subject trains when the CT is not split)
            out = fold_dir / model / f"test_{test}"
            if (out / "metrics.json").is_file():
                metrics = json.loads((out / "metrics.json").read_text())
            else:
                metrics = run_evaluation(datalist, model_path, out, sizes, adaptation=adaptation, modality=test, eval_section=TEST_SECTIONS[test])
            rows += [{"fold": fold, "model": model, "test": test, "train_seconds": marker.get("train_seconds"), "precision": marker.get("precision"),
                      **shared, **row} for row in metrics["subjects"]]
            if test == "mr" and settings["stress"]:  # the same held-out patients under each shift of the robustness suite
                subjects = [subject(e) for e in sections[TEST_SECTIONS[test]]]
                for variant, suite in _stress_suite(fold_dir.parents[1]).items():
                    variant_out = fold_dir / model / f"test_mr_{variant}"
                    if (variant_out / "metrics.json").is_file():
                        metrics = json.loads((variant_out / "metrics.json").read_text())
                    else:
                        held_out = suite_datalist(suite, subjects, fold_dir / "stress" / f"{variant}.json")
                        metrics = run_evaluation(held_out, model_path, variant_out, sizes, adaptation=adaptation, modality="mr",
                                                 eval_section="target_test")
                    rows += [{"fold": fold, "model": model, "test": f"mr/{variant}", "train_seconds": marker.get("train_seconds"),
                              "precision": marker.get("precision"), **shared, **row} for row in metrics["subjects"]]
    _write_json(done, rows)
    return rows


STRESS_SUITE = "stress_suite"  # the robustness suite's folder in a run folder (bundle/stress.py)


def _stress_suite(out: Path) -> dict[str, Path]:
    """The robustness suite's variant datalists of the run in ``out`` (made by ``run_experiments``)."""
    return {v: out / STRESS_SUITE / v / "datalist.json" for v in VARIANTS}


def _trained_twin(fold_dir: Path, model: str, sections: dict) -> Path | None:
    """``model`` trained to its end in another fold of this experiment (or its run on every subject) on
    the same CT: a model that sees no MR (``SOURCE_ONLY``) is then the same training, so the folds
    share it instead of training it again (when the CT is not split, 45-80 CPU minutes a fold at 128 px)."""
    if model not in SOURCE_ONLY:
        return None
    for other in sorted(p for p in fold_dir.parent.iterdir() if p != fold_dir):
        try:
            theirs = json.loads((other / "datalist.json").read_text())
        except (OSError, ValueError):
            continue
        if _trained(other / model) and all(theirs.get(k) == sections.get(k) for k in ("source", "source_val")):
            return other / model
    return None


def _copy_trained(twin: Path, model_dir: Path) -> None:
    """``twin``'s weights, their wall-time record and its ``trained`` marker (last, with where they came
    from) into ``model_dir``, which loses what an unfinished run of the same training left there."""
    logger.info("%s: the same training as %s (the same CT, no MR): copied", model_dir, twin)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    for path in twin.iterdir():
        if path.is_file() and path.name != "trained":
            shutil.copy2(path, model_dir / path.name)
    _write_json(model_dir / "trained", _marker(twin) | {"copied_from": str(twin)})


def _model_path(model_dir: Path, overrides: dict) -> Path:
    """The stage-2 weights a model is tested with: its best validation epoch where it had validation."""
    return model_dir / ("model_best.pt" if "val_section" in overrides else "model.pt")


def _pseudo_datalist(fold_dir: Path, model_dir: Path, teachers: tuple[str, ...], sections: dict, sizes: dict, settings: dict) -> Path:
    """The fold's datalist plus its training MR pseudo-labelled by ``teachers`` (trained before in this fold)."""
    models = [(_model_path(fold_dir / t, _stage2_overrides(t, settings, sections)), MODELS[t][1]) for t in teachers]
    return pseudo_labelled_datalist(sections, models, model_dir, sizes, amp=settings["amp"])


def _marker(model_dir: Path) -> dict:
    """The ``trained`` marker of ``model_dir``: what its training recorded; ``{}`` if none or unreadable."""
    try:
        marker = json.loads((model_dir / "trained").read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _train_seconds(model_dir: Path) -> float | None:
    """Wall time of the model's training (recorded in its ``trained`` marker; older runs have none)."""
    return _marker(model_dir).get("train_seconds")


ADDED_SETTINGS = {"task_weight": 0.0, "models": None, "paper_stage1": False, "pseudo_repeat": 1, "stage1_pseudo_labels": False,
                  "stress": False}  # settings newer than some recorded runs, at the value those runs used


def _names(text: str | list[str]) -> list[str]:
    """A comma-separated command-line list (or a list already)."""
    return [e.strip() for e in (text.split(",") if isinstance(text, str) else text)]


ALL_SUBJECTS = "all"  # --run_folds' name of the run on every subject: the recipe the folds scored, for shipping


def _fold_indices(run_folds: str | int | list[int] | tuple[int, ...] | None) -> set[int | str] | None:
    """``--run_folds`` as a set of indices and/or ``all``; the command line gives ``1`` as an int and ``0,1`` as a tuple."""
    if run_folds is None:
        return None
    items = run_folds.split(",") if isinstance(run_folds, str) else run_folds if isinstance(run_folds, (list, tuple)) else [run_folds]
    try:
        return {ALL_SUBJECTS if str(k).strip() == ALL_SUBJECTS else int(k) for k in items}
    except ValueError:
        raise ValueError(f"--run_folds: fold indices from 0 and/or {ALL_SUBJECTS!r}, got {run_folds!r}") from None


def all_subjects_repeat(pseudo_repeat: int, ct: list[dict], mr: list[dict], ct_test: list[list[str]], mr_test: list[list[str]]) -> int:
    """``pseudo_repeat`` for the run on every subject (``--run_folds all``): a self-trained model's
    epoch keeps the folds' share of pseudo-labelled MR against CT (twice the MR: half the repeats)."""
    n_ct, n_mr = (len({subject(e) for e in entries}) for entries in (ct, mr))
    ct_share = np.mean([(n_ct - len(t)) / n_ct for t in ct_test])  # the training share of the subjects in a fold
    mr_share = np.mean([(n_mr - len(t)) / n_mr for t in mr_test])
    return max(1, round(pseudo_repeat * mr_share / ct_share))


def _check_resumable(path: Path, settings: dict) -> None:
    """Record the settings of a new run; a run resumed in the same folder must use the same ones,
    or its folds would mix results of different settings. ``models`` may differ: which models a run
    trains does not change how any of them trains, so a later run adds rows (or shows fewer) in the
    same folder, and the record keeps every model asked for (``None``: all)."""
    if path.is_file():
        before = ADDED_SETTINGS | json.loads(path.read_text())
        if changed := {k: (before.get(k), v) for k, v in settings.items() if k != "models" and before.get(k) != v}:
            raise DataError(path, f"this folder holds a run with other settings ({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                                  "use another --out or the same settings")
        if before["models"] is not None and settings["models"] != before["models"]:
            asked = None if settings["models"] is None else before["models"] + [m for m in settings["models"] if m not in before["models"]]
            if asked != before["models"]:
                _write_json(path, before | {"models": asked})
    else:
        _write_json(path, settings)


def run_experiments(datalist: str | Path, out: str | Path, folds: int = 5, multiphase_datalist: str | Path | None = None, size: int = 128, dim: int = 32,
                    drl_iterations: int = 20000, cyclegan_iterations: int = 20000, seg_epochs: int = 30, seed: int = 0, figures: bool = True,
                    split_source: bool = True, experiments: str | list[str] = "da", ct_folds: int | None = None, val_subjects: int = 0,
                    amp: str | None = None, iterations_per_epoch: int | None = None, unet_channels: list[int] | None = None,
                    context_slices: int = 0, organs: bool = False, task_weight: float = 0.0, models: str | list[str] | None = None,
                    paper_stage1: bool = False, pseudo_repeat: int = 1, run_folds: str | list[int] | None = None,
                    stage1_pseudo_labels: bool = False, stress: bool = False) -> dict:
    """Run the experiments under ``out``; writes ``results.csv``, ``results.json`` and ``results.md``.

    Args:
        datalist: labelled CT in ``source``, labelled MR in ``target_labelled`` and/or ``target_test``
            (folds are made over all of them; MR labels are used for testing and the upper bound only).
            Entries need a ``subject`` key where a subject has several images (MR phases), or
            they are split as separate subjects.
        out: output folder (re-running with the same folder resumes).
        folds: number of subject-wise folds (each modality needs at least that many subjects).
        multiphase_datalist: a datalist whose MR entries are the three T1 phases (the phantoms'
            ``datalist_multiphase.json``) for table 3, or ``None``.
        size: in-plane slice size of every network.
        dim: channels of the first layer of the DRLModule and of the CycleGAN.
        drl_iterations, cyclegan_iterations: GAN iterations per fold.
        seg_epochs: UNet epochs.
        seed: seed of the folds and of every training.
        figures: also draw the paper's Fig. 3-7 from fold 0 into ``out/figures`` (experiment ``da``).
        split_source: split the CT subjects into folds too (the paper). ``False``: every fold
            trains on all CT subjects and the folds split the MR only, for a small CT set;
            nothing is then tested on CT (table 2's CT columns stay empty).
        experiments: which to run, comma-separated: ``da`` (tables 1-2), ``mr_bound``, ``ct_only``,
            ``dadr`` (DADR, with appearance randomisation, self-trained, its diverse style transfer and the
            supervised bounds: one stage 1 per fold), ``self_training``
            (the CT-trained randomised UNet and DACGAN, each with its self-trained student; ``multiphase`` runs when
            ``multiphase_datalist`` is given).
        ct_folds: folds over the CT subjects for ``ct_only`` (default: ``folds``).
        val_subjects: training subjects per modality held out for validation; the UNets are then
            evaluated at their best validation epoch (``model_best.pt``) instead of the last.
        amp: ``bfloat16`` autocast for every training (GANs and UNets), or ``None``.
        iterations_per_epoch: UNet iterations per epoch (``None``: one pass over the slices), so
            that ``seg_epochs`` means the same compute for small and large training sets.
        unet_channels: the segmentation UNet's channels per level (default: train.yaml's).
        context_slices: adjacent slices on each side as extra UNet input channels (2.5D), or 0.
        organs: train the UNets on the organ maps (liver, kidneys, spleen: the datalists' ``organs``)
            instead of the liver masks; every model still outputs and is scored on the liver.
        task_weight: stage 1's task-aware content space (``configs/drl_train.yaml``), 0: the paper's.
        models: run only these of the experiments' models (comma-separated; a self-trained model
            needs its teacher, the dual path its two members), e.g. ``dadr`` for the paper's row alone; ``None``: all.
        paper_stage1: stage 1 with the paper's settings (``PAPER_STAGE1``) instead of our defaults.
        pseudo_repeat: times each pseudo-labelled MR volume counts per epoch of a self-trained model
            (train.yaml ``joint_repeat``): a few MR against many CT slices.
        run_folds: train only these folds (comma-separated indices from 0, e.g. ``1``), one job per fold on
            a cluster or across sessions; the other folds enter the tables where an earlier run in ``out``
            finished them, and ``results.md`` names the folds it holds. ``None``: every fold. ``all`` (alone
            or beside indices) trains the models once more on every subject, in ``<experiment>/all``, and tests
            nothing: the cross-validated recipe for the model to ship (``scripts/ship_model.py``); its
            ``pseudo_repeat`` is scaled so that an epoch holds the folds' share of pseudo-labelled MR.
        stage1_pseudo_labels: stage 1's task term also on the fold's training MR, against the masks where
            ``STAGE1_TEACHERS`` (trained first, without MR labels) agree (drl_train.yaml ``target_pseudo_labels``):
            stage 1 adapts to every training MR and segments those whose masks passed the filters; needs ``task_weight`` > 0.
        stress: also test every model on the robustness suite (``bundle/stress.py``): each held-out MR under each
            shift, made once from the datalist's labelled MR into ``out/stress_suite``; rows ``mr/<variant>``.
    """
    out = Path(out)
    figures, split_source, organs = flag(figures, "figures"), flag(split_source, "split_source"), flag(organs, "organs")
    names = _names(experiments)
    if unknown := [e for e in names if e not in EXPERIMENTS or e == "multiphase"]:
        raise ValueError(f"--experiments: unknown {unknown}; choose from {[e for e in EXPERIMENTS if e != 'multiphase']}")
    datalist = Path(datalist).resolve()
    multiphase_datalist = None if multiphase_datalist is None else Path(multiphase_datalist).resolve()
    ct_folds = ct_folds or folds
    chosen_folds = _fold_indices(run_folds)
    if chosen_folds is not None and not chosen_folds <= set(range(max(folds, ct_folds))) | {ALL_SUBJECTS}:
        raise ValueError(f"--run_folds: {sorted(map(str, chosen_folds))} are not all fold indices 0..{max(folds, ct_folds) - 1} or {ALL_SUBJECTS!r}")
    settings = {"image_size": size, "dim": dim, "drl_iterations": drl_iterations, "cyclegan_iterations": cyclegan_iterations,
                "seg_epochs": seg_epochs, "seed": seed, "folds": folds, "split_source": split_source, "datalist": str(datalist),
                "multiphase_datalist": None if multiphase_datalist is None else str(multiphase_datalist),
                "experiments": names, "ct_folds": ct_folds, "val_subjects": val_subjects, "amp": amp,
                "iterations_per_epoch": iterations_per_epoch, "unet_channels": list(unet_channels or [16, 32, 64, 128, 256]),
                "context_slices": context_slices, "organs": organs, "task_weight": task_weight,
                "models": None if models is None else _names(models), "paper_stage1": flag(paper_stage1, "paper_stage1"),
                "pseudo_repeat": int(pseudo_repeat), "stage1_pseudo_labels": flag(stage1_pseudo_labels, "stage1_pseudo_labels"),
                "stress": flag(stress, "stress")}
    if settings["paper_stage1"] and task_weight:
        raise ValueError("--paper_stage1 True is the paper's stage 1: it has no task-aware term (--task_weight 0)")
    if settings["stage1_pseudo_labels"] and not task_weight:
        raise ValueError("--stage1_pseudo_labels True puts the MR in stage 1's task term: it needs --task_weight > 0")
    if settings["models"] is not None:
        known = {m for e in names for m in EXPERIMENTS[e]}
        if unknown := [m for m in settings["models"] if m not in known]:
            raise ValueError(f"--models: {unknown} not in the experiments {names}; choose from {sorted(known)}")
        needs = {m: {*TEACHERS.get(m, ()), *DUAL_PATH.get(m, ()), *FALLBACK.get(m, ())} for m in settings["models"]}  # teachers, joined members
        if orphans := [m for m in settings["models"] if not needs[m] <= set(settings["models"])]:
            missing = sorted({t for m in orphans for t in needs[m]} - set(settings["models"]))
            raise ValueError(f"--models: {orphans} learn from {missing}: name those too")
    ct = labelled_entries(datalist, ("source",), "ct")
    targets = {e: labelled_entries(datalist, LABELLED_MR_SECTIONS, "mr") for e in names}
    if multiphase_datalist is not None:
        targets["multiphase"] = labelled_entries(multiphase_datalist, LABELLED_MR_SECTIONS, "mr")

    def fold_lists(experiment: str) -> tuple[list[list[str]], list[list[str]]]:
        """(CT, MR) test subjects per fold; an unsplit modality holds nothing out (CT) or everything (MR of ct_only)."""
        source = multiphase_datalist if experiment == "multiphase" else datalist
        k = ct_folds if experiment == "ct_only" else folds
        split_ct = "ct" in FOLDED[experiment] and (split_source or experiment == "ct_only")
        ct_test = subject_folds(ct, k, seed, datalist) if split_ct else [[] for _ in range(k)]
        mr_subjects = sorted({subject(e) for e in targets[experiment]})
        mr_test = subject_folds(targets[experiment], k, seed, source) if "mr" in FOLDED[experiment] else [mr_subjects] * k
        return ct_test, mr_test

    plans = {experiment: fold_lists(experiment) for experiment in targets}  # bad inputs fail before anything is written
    _check_resumable(out / "settings.json", settings)
    if settings["stress"]:
        make_stress_suite(labelled_entries(datalist, LABELLED_MR_SECTIONS, "mr"), out / STRESS_SUITE, seed=seed)
    rows_by_experiment = {}
    for experiment, mr in targets.items():
        ct_test, mr_test = plans[experiment]
        rows = []
        chosen = {m: t for m, t in EXPERIMENTS[experiment].items() if settings["models"] is None or m in settings["models"]}
        if chosen_folds is not None and ALL_SUBJECTS in chosen_folds:  # no test: nothing enters the tables
            fold_dir = out / experiment / ALL_SUBJECTS
            if not (fold_dir / "datalist.json").is_file():
                _write_json(fold_dir / "datalist.json", fold_datalist(ct, mr, [], [], val_subjects, seed))
            repeat = all_subjects_repeat(settings["pseudo_repeat"], ct, mr, ct_test, mr_test)
            logger.info("%s: every subject trains (%d CT, %d MR unlabelled images; pseudo-labelled MR x%d), nothing is tested",
                        fold_dir, len(ct), len(mr), repeat)
            _run_fold(fold_dir, ALL_SUBJECTS, chosen, settings | {"pseudo_repeat": repeat})
        for k in range(len(ct_test)):
            fold_dir = out / experiment / f"fold_{k}"
            if chosen_folds is not None and k not in chosen_folds:
                if (finished := _finished_rows(fold_dir, chosen)) is None:
                    logger.info("%s fold %d/%d: not in --run_folds and not finished before with these models, left out of the tables",
                                experiment, k + 1, len(ct_test))
                else:
                    rows += finished
                continue
            if not (fold_dir / "datalist.json").is_file():
                _write_json(fold_dir / "datalist.json", fold_datalist(ct, mr, ct_test[k], mr_test[k], val_subjects, seed))
            logger.info("%s fold %d/%d: CT test %s, MR test %s", experiment, k + 1, len(ct_test), ct_test[k], mr_test[k])
            rows += _run_fold(fold_dir, k, chosen, settings)
        rows_by_experiment[experiment] = rows
    table_data, markdown = tables(rows_by_experiment)
    all_rows = [{"experiment": e, **r} for e, rows in rows_by_experiment.items() for r in rows]
    fields = ["experiment", "fold", "model", "test", "subject", "dice", "hd95_mm", "assd_mm", "train_seconds", "stage1_seconds", "cyclegan_seconds",
              "precision", "image"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(all_rows)
    held = {e: sorted({r["fold"] for r in rows}) for e, rows in rows_by_experiment.items()}
    # --amp bfloat16 runs in float32 on a CPU without bfloat16 arithmetic: this machine's precision here, and each row its
    # model's, from its trained marker (a run folder may link models trained elsewhere; None: older runs)
    precision = precision_that_runs(amp)
    result = {"settings": settings, "precision": precision, "folds_in_tables": held, "tables": table_data, "rows": all_rows}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([out / "results.csv", out / "results.json", out / "results.md"]) as (tmp_csv, tmp_json, tmp_md):
        tmp_csv.write_text(text.getvalue())
        tmp_json.write_text(json.dumps(result, indent=2))
        tmp_md.write_text(f"Dice mean (std) over held-out images, subject-wise cross-validation; "
                          f"folds in the tables: {json.dumps(held)}; precision: {precision}; settings: {json.dumps(settings)}\n\n{markdown}")
    print(markdown)
    if figures and 0 in held.get("da", []):  # the figures show fold 0
        result["figures"] = [str(p) for p in experiment_figures(out, size, dim, task_weight=task_weight)]
    return result


def _networks(fold_dir: Path, size: int, dim: int, task_weight: float = 0.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Fold ``fold_dir``'s DRLModule and CycleGAN, built by the configs that trained them."""
    built = []
    for configs, weights in (([CONFIGS / "drl_train.yaml"], "drl/drl.pt"), ([CONFIGS / "drl_train.yaml", CONFIGS / "cyclegan_train.yaml"], "cyclegan/cyclegan.pt")):
        parser = ConfigParser()
        parser.read_config([str(c) for c in configs])
        parser.update({"image_size": size, "dim": dim, "task_weight": task_weight})
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(torch.load(fold_dir / weights, map_location="cpu", weights_only=True))
        built.append(network.eval())
    return built[0], built[1]


def _liver_slices(entries: list[dict], modality: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per volume, the slice with most liver: ((N, 1, S, S) images, (N, S, S) masks)."""
    slices = volume_slices(entries, modality, size, with_label=True)
    best = [int(torch.nonzero(slices["subject"] == i)[slices["label"][slices["subject"] == i].sum(dim=(1, 2, 3)).argmax()])
            for i in range(len(entries))]
    return slices["image"][best], slices["label"][best, 0]


@torch.no_grad()
def experiment_figures(out: str | Path, size: int, dim: int, n: int = 2, task_weight: float = 0.0) -> list[Path]:
    """The paper's Fig. 3-7 from fold 0 of a finished run under ``out``, as PNGs in ``out/figures``."""
    out = Path(out)
    figures, paths = out / "figures", []
    fold = out / "da" / "fold_0"
    datalist = fold / "datalist.json"
    drl, cyclegan = _networks(fold, size, dim, task_weight)
    held_out_ct = json.loads(datalist.read_text())["source_test"]  # empty when the CT was not split
    ct, ct_mask = _liver_slices(read_datalist(datalist, "source_test" if held_out_ct else "source")[:n], "ct", size)
    mr_entries = read_datalist(datalist, "target_test")[:n]
    mr, mr_mask = _liver_slices(mr_entries, "mr", size)
    generated = cyclegan.translate(ct, "ct", "mr")
    paths.append(slice_grid([(f"case {i + 1}", [("CT", ct[i, 0]), ("generated MR", generated[i, 0]), ("MR", mr[i % len(mr), 0])])
                             for i in range(len(ct))], figures / "fig3_cyclegan_translation.png"))
    content_ct, content_mr = drl.content_only(ct, "ct"), drl.content_only(mr, "mr")
    paths.append(slice_grid([(f"case {i + 1}", [("CT", ct[i, 0]), ("content-only CT", content_ct[i, 0]),
                                                ("content-only MR", content_mr[i % len(mr), 0]), ("MR", mr[i % len(mr), 0])])
                             for i in range(len(ct))], figures / "fig4_content_only.png"))
    rows = [(subject(entry), [("MR", entry["image"]), ("liver mask", entry["label"])]
             + [(model, fold / model / "test_mr" / f"{case_name(entry['image'])}_liver.nii.gz") for model in ("unet_ct", "dacgan", "dadr")])
            for entry in mr_entries]
    paths.append(adaptation_figure(rows, [e["label"] for e in mr_entries], figures / "fig5_segmentation.png"))

    multiphase = out / "multiphase" / "fold_0"
    if (multiphase / "drl" / "drl.pt").is_file():
        drl, _ = _networks(multiphase, size, dim)
        entries = read_datalist(multiphase / "datalist.json", "target_test")
        phases = [e for e in entries if subject(e) == subject(entries[0])]
        images, mask = _liver_slices(phases, "mr", size)
        names = [e.get("sequence", f"phase {i + 1}") for i, e in enumerate(phases)]
        content = drl.content_only(images, "mr")
        paths.append(slice_grid([("image", list(zip(names, images[:, 0]))), ("content-only", list(zip(names, content[:, 0])))],
                                figures / "fig6_multiphase_content_only.png", [mask[0], mask[0]]))
        ct_content = drl.content_encoders["ct"](ct)
        styles = drl.style_encoders["mr"](images)  # Es of each reference phase
        gen = torch.Generator().manual_seed(0)
        rows = []
        for i in range(len(ct)):
            with_reference = [("CT", ct[i, 0])]
            for name, reference, style in zip(names, images, styles):
                with_reference += [(f"reference {name}", reference[0]), ("generated", drl.decode(ct_content[i : i + 1], style[None], "mr")[0, 0])]
            rows.append((f"case {i + 1}", with_reference))
            random_styles = drl.random_style(4, ct, gen)
            rows.append((f"case {i + 1}", [("CT", ct[i, 0])] + [(f"random style {k + 1}", drl.decode(ct_content[i : i + 1], s[None], "mr")[0, 0])
                                                                for k, s in enumerate(random_styles)]))
        paths.append(slice_grid(rows, figures / "fig7_diverse_style_transfer.png"))
    return paths
