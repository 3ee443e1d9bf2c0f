"""The DACGAN baseline (CycleGAN networks, trainer, stage-2 translation) and the k-fold experiment runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import nibabel as nib
import numpy as np
import torch
from conftest import run_script

from bundle.cli import flag, optional
from bundle.data.adapted import AdaptedSlices
from bundle.data.datalist import read_datalist
from bundle.errors import DataError
from bundle.experiments import EXPERIMENTS, run_experiments
from bundle.folds import fold_datalist, subject_folds
from bundle.tables import TABLES
from bundle.losses import CycleGANLoss
from bundle.networks import CycleGAN, LiverSegmenter, PatchDiscriminators, load_style_transfer, load_translator
from bundle.pipeline import run_cyclegan, run_stage1
from bundle import precision
from bundle.stress import VARIANTS

SIZES = {"image_size": 64, "dim": 8}


def test_cyclegan_shapes_and_cycle():
    gan = CycleGAN(dim=8, n_res=2)
    x_ct, x_mr = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    out = gan(x_ct, x_mr)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, 1, 64, 64) for k in ("ct2mr", "mr2ct", "cycle_ct", "cycle_mr")}
    assert torch.equal(gan.reconstruct(x_ct, "ct"), out["cycle_ct"])
    assert out["ct2mr"].abs().max() <= 1  # tanh output, the slices' range
    scores_ct, scores_mr = PatchDiscriminators(dim=8)(x_ct, x_mr)
    assert len(scores_ct) == len(scores_mr) == 1 and scores_ct[0].shape[:2] == (2, 1)
    terms = CycleGANLoss(cycle_weight=10.0)(out, x_ct, x_mr, torch.tensor(0.5))
    assert torch.isclose(terms["total"], 0.5 + 10 * (terms["cycle_ct"] + terms["cycle_mr"]))


def test_cyclegan_bundle_run_and_dacgan_training_slices(phantoms, tmp_path):
    """The real MONAI workflow (drl_train.yaml + cyclegan_train.yaml) trains and writes weights whose
    ct2mr generator turns stage 2's CT slices into MR-like ones; wrong sizes are named errors."""
    validation = run_cyclegan(phantoms, tmp_path / "cg", 20, SIZES, cyclegan_res=2)
    weights = tmp_path / "cg" / "cyclegan.pt"
    assert weights.is_file() and validation["iteration"] == 18
    assert sorted(validation) == ["cycle_l1_ct", "cycle_l1_mr", "iteration"]
    assert list((tmp_path / "cg" / "images").glob("cyclegan_*.png"))
    translator = load_translator(weights, dim=8, n_res=2)
    assert not any(p.requires_grad for p in translator.parameters())
    network = LiverSegmenter(64)
    ct = read_datalist(phantoms / "datalist.json", "source")
    plain, translated = AdaptedSlices(ct, network), AdaptedSlices(ct, network, translator=translator)
    assert len(plain) == len(translated) and torch.equal(plain.labels, translated.labels)
    with torch.no_grad():
        assert torch.allclose(translated.images[:4], translator(plain.images[:4]), atol=1e-5)
    mr = [dict(e, modality="mr") for e in read_datalist(phantoms / "datalist.json", "target_labelled")]
    student = AdaptedSlices(ct + mr, network, translator=translator)  # dacgan_st: the CT translated, the (pseudo-)labelled MR as they are
    assert torch.equal(student.images[:len(plain)], translated.images)
    assert torch.equal(student.images[len(plain):], AdaptedSlices(mr, network, modality="mr").images) and len(student) > len(plain)
    with pytest.raises(DataError, match="cyclegan.pt: does not fit"):
        load_translator(weights, dim=16, n_res=2)
    with pytest.raises(DataError, match="missing.pt: does not exist"):
        load_translator(tmp_path / "missing.pt", dim=8, n_res=2)


def test_dadr_style_transfer_translates_ct_slices_with_a_random_mr_style_each(phantoms, tmp_path):
    """Stage 1's weights as stage 2's CT -> MR translator (--adaptation dadr_style): frozen, the
    labels untouched, every slice its own sampled MR style; wrong weights are named errors."""
    run_stage1(phantoms, tmp_path / "drl", 4, SIZES)
    weights = tmp_path / "drl" / "drl.pt"
    translator = load_style_transfer(weights, dim=8, shared_res=1, image_size=64)
    assert not any(p.requires_grad for p in translator.parameters())
    network = LiverSegmenter(64)
    ct = read_datalist(phantoms / "datalist.json", "source")
    plain, translated = AdaptedSlices(ct, network), AdaptedSlices(ct, network, translator=translator.train())
    assert not translator.training and torch.equal(plain.labels, translated.labels)
    assert translated.images.shape == plain.images.shape and not torch.allclose(translated.images, plain.images, atol=0.1)
    one = plain.images[:1].expand(4, -1, -1, -1)
    styled = translator(one)
    content = translator.drl.content_encoders["ct"](one)
    assert torch.equal(content[0], content[3])  # one content
    assert (styled[0] - styled[1:]).abs().amax() > 1e-3  # four styles
    with pytest.raises(DataError, match="drl.pt: does not fit.*trained for image_size 64"):
        load_style_transfer(weights, dim=8, shared_res=1, image_size=128)
    with pytest.raises(DataError, match="drl.pt: does not fit"):
        load_style_transfer(weights, dim=16, shared_res=1, image_size=64)
    with pytest.raises(DataError, match="missing.pt: does not exist"):
        load_style_transfer(tmp_path / "missing.pt", dim=8, image_size=64)
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(phantoms),
               "--output_dir", str(tmp_path / "seg"), "--drl_path", str(weights), "--adaptation", "dadr_styl", "--max_epochs", "1"]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        "error: --adaptation: must be one of none, dadr, cyclegan, dadr_style, got 'dadr_styl'"), result.stderr[-1000:]
    assert not (tmp_path / "seg" / "model.pt").exists()  # a typo trains nothing, rather than a model without adaptation


def test_subject_folds_are_disjoint_and_keep_a_subjects_images_together():
    entries = [{"image": f"{s}_{p}.nii.gz", "subject": s} for s in ("a", "b", "c", "d", "e") for p in ("pre", "art")]
    folds = subject_folds(entries, 2, seed=0)
    assert sorted(sum(folds, [])) == ["a", "b", "c", "d", "e"] and sorted(map(len, folds)) == [2, 3]
    assert subject_folds(entries, 2, seed=0) == folds
    with pytest.raises(DataError, match="5 subjects: --folds must be between 2 and 5, got 6"):
        subject_folds(entries, 6, seed=0)


def test_fold_datalists_with_and_without_splitting_the_ct():
    ct = [{"image": f"ct{i}.nii.gz", "label": f"ct{i}_liver.nii.gz", "subject": f"ct{i}"} for i in range(3)]
    mr = [{"image": f"mr{i}.nii.gz", "label": f"mr{i}_liver.nii.gz", "subject": f"mr{i}"} for i in range(3)]
    split = fold_datalist(ct, mr, ["ct0"], ["mr1", "mr2"])
    assert [e["subject"] for e in split["source"]] == ["ct1", "ct2"] and [e["subject"] for e in split["source_test"]] == ["ct0"]
    assert [e["subject"] for e in split["target_test"]] == ["mr1", "mr2"] and split["target_labelled"] == [mr[0]]
    assert split["target"] == [{"image": "mr0.nii.gz", "subject": "mr0"}]  # unlabelled for adaptation
    whole = fold_datalist(ct, mr, [], ["mr1", "mr2"])
    assert whole["source"] == ct and whole["source_test"] == []


def test_experiment_runner_two_folds_on_phantoms_resumes(phantoms, tmp_path):
    """A tiny 2-fold run of the three tables: every held-out image tested once per model and test
    modality, files written, a second run recomputes nothing, other settings are refused."""
    out = tmp_path / "exp"
    settings = dict(folds=2, multiphase_datalist=phantoms / "datalist_multiphase.json", size=64, dim=8,
                    drl_iterations=4, cyclegan_iterations=4, seg_epochs=1)
    result = run_experiments(phantoms / "datalist.json", out, **settings)
    datalist = json.loads((phantoms / "datalist.json").read_text())
    n_mr = len({e["subject"] for e in datalist["target_labelled"] + datalist["target_test"]})
    n_ct = len(datalist["source"])
    rows = result["rows"]
    for experiment in ("da", "multiphase"):
        models = EXPERIMENTS[experiment]
        phases = 3 if experiment == "multiphase" else 1
        for model, tests in models.items():
            for test in tests:
                got = [r for r in rows if (r["experiment"], r["model"], r["test"]) == (experiment, model, test)]
                assert len(got) == (n_mr * phases if test == "mr" else n_ct), (experiment, model, test)
                assert len({r["image"] for r in got}) == len(got)
                assert all(0.0 <= r["dice"] <= 1.0 for r in got)
    assert [t for t, e, *_ in TABLES if e in ("da", "multiphase")] == list(result["tables"])
    assert not [p for p in (out / "da").glob("fold_*/unet_ct/trained") if "copied_from" in json.loads(p.read_text())]  # CT split: one each
    markdown = (out / "results.md").read_text()
    assert "DADR (UNet on content-only CT) | " in markdown and "0.81 (0.03)" in markdown
    assert len((out / "results.csv").read_text().splitlines()) == len(rows) + 1
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "fig3_cyclegan_translation.png", "fig4_content_only.png", "fig5_segmentation.png",
        "fig6_multiphase_content_only.png", "fig7_diverse_style_transfer.png"]

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".pt", ".json") and "figures" not in p.parts and p.parent != out}
    again = run_experiments(phantoms / "datalist.json", out, **settings, figures=False)
    assert again["rows"] == rows
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # --models may change between runs of one folder: fewer show their rows, one more is added alone
    subset = run_experiments(phantoms / "datalist.json", out, **settings, figures=False, models="unet_ct,dadr")
    assert subset["rows"] == [r for r in rows if r["model"] in ("unet_ct", "dadr")]
    assert json.loads((out / "settings.json").read_text())["models"] is None  # the folder keeps "every model"
    fold_results = out / "da" / "fold_0" / "results.json"
    fold_results.write_text(json.dumps([r for r in json.loads(fold_results.read_text()) if r["model"] != "joint"]))  # joint came later
    other_fold = run_experiments(phantoms / "datalist.json", out, **settings, figures=False, run_folds=1)  # not fold 0's job
    assert {r["fold"] for r in other_fold["rows"] if r["experiment"] == "da"} == {1} and other_fold["folds_in_tables"]["da"] == [1]
    assert run_experiments(phantoms / "datalist.json", out, **settings, figures=False)["rows"] == rows
    assert {p: p.stat().st_mtime_ns for p in stamps if p != fold_results} == {p: t for p, t in stamps.items() if p != fold_results}
    recorded = json.loads((out / "settings.json").read_text())
    (out / "settings.json").write_text(json.dumps(recorded | {"models": ["unet_ct"]}))  # a folder first run with one model
    run_experiments(phantoms / "datalist.json", out, **settings, figures=False, models="dadr,unet_ct")
    assert json.loads((out / "settings.json").read_text())["models"] == ["unet_ct", "dadr"]
    (out / "settings.json").write_text(json.dumps(recorded))
    with pytest.raises(DataError, match="other settings .*seg_epochs: 1 -> 2"):
        run_experiments(phantoms / "datalist.json", out, **(settings | {"seg_epochs": 2}))
    recorded = json.loads((out / "settings.json").read_text())  # a run recorded before the task-aware option resumes
    (out / "settings.json").write_text(json.dumps({k: v for k, v in recorded.items() if k != "task_weight"}))
    assert run_experiments(phantoms / "datalist.json", out, **settings, figures=False)["rows"] == rows
    with pytest.raises(DataError, match="other settings .*task_weight: 0.0 -> 1.0"):
        run_experiments(phantoms / "datalist.json", out, **(settings | {"task_weight": 1.0}))

    # a stage 2 that did not run to its end (no marker; MONAI saves model.pt even when interrupted) is redone, alone
    fold = out / "da" / "fold_1"
    (fold / "results.json").unlink()
    (fold / "dadr" / "trained").unlink()
    again = run_experiments(phantoms / "datalist.json", out, **settings, figures=False)
    assert (fold / "dadr" / "model.pt").stat().st_mtime_ns > stamps[fold / "dadr" / "model.pt"]
    assert (fold / "unet_ct" / "model.pt").stat().st_mtime_ns == stamps[fold / "unet_ct" / "model.pt"]
    assert len(again["rows"]) == len(rows)


def test_bounds_and_ct_only_baselines_fold_one_modality_each(phantoms, tmp_path):
    """mr_bound folds the MR only, ct_only the CT only and tests each fold's CT models on every MR
    image; validation subjects come out of the training folds and pick model_best.pt."""
    out = tmp_path / "bounds"
    result = run_experiments(phantoms / "datalist.json", out, folds=2, ct_folds=2, size=64, dim=8, seg_epochs=2,
                             experiments="mr_bound,ct_only", val_subjects=1, amp="bfloat16", iterations_per_epoch=2,
                             unet_channels=[8, 16, 32, 64, 128])
    datalist = json.loads((phantoms / "datalist.json").read_text())
    mr_images = {e["image"].split("/")[-1] for e in datalist["target_labelled"] + datalist["target_test"]}
    rows = result["rows"]
    assert result["precision"] == ("bfloat16" if precision.cpu_has_bfloat16() else "float32")  # what ran, not only what was asked
    assert {r["precision"] for r in rows} == {result["precision"]}  # each model's, from its trained marker
    mr_bound = [r for r in rows if r["experiment"] == "mr_bound"]
    assert sorted(r["image"].split("/")[-1] for r in mr_bound) == sorted(mr_images)  # each MR held out once
    for model in ("unet_ct", "unet_ct_rand"):
        ct_rows = [r for r in rows if (r["experiment"], r["model"], r["test"]) == ("ct_only", model, "ct")]
        assert len(ct_rows) == len(datalist["source"]) and len({r["image"] for r in ct_rows}) == len(ct_rows)
        for fold in (0, 1):
            assert {r["image"].split("/")[-1] for r in rows if (r["model"], r["test"], r["fold"]) == (model, "mr", fold)} == mr_images
    for fold in (0, 1):
        sections = json.loads((out / "mr_bound" / f"fold_{fold}" / "datalist.json").read_text())
        train, val, test = ({e["subject"] for e in sections[k]} for k in ("target_labelled", "target_val", "target_test"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert (out / "mr_bound" / f"fold_{fold}" / "unet_mr" / "model_best.pt").is_file() == bool(val)
        assert json.loads((out / "ct_only" / f"fold_{fold}" / "unet_ct" / "trained").read_text())["train_seconds"] > 0
    markdown = (out / "results.md").read_text()
    assert "CT trained, appearance randomisation |" in markdown and "Per MR image (Dice):" in markdown
    with pytest.raises(ValueError, match="unknown \\['nope'\\]"):
        run_experiments(phantoms / "datalist.json", tmp_path / "other", experiments="mr_bound,nope")
    with pytest.raises(ValueError, match="learn from \\['dadr_rand'\\]"):
        run_experiments(phantoms / "datalist.json", tmp_path / "other", experiments="dadr", models="dadr,dadr_rand_st")
    with pytest.raises(ValueError, match="learn from \\['dacgan'\\]"):
        run_experiments(phantoms / "datalist.json", tmp_path / "other", experiments="self_training", models="dacgan_st")
    with pytest.raises(ValueError, match="not in the experiments"):
        run_experiments(phantoms / "datalist.json", tmp_path / "other", experiments="mr_bound", models="dadr")
    with pytest.raises(ValueError, match="no task-aware term"):
        run_experiments(phantoms / "datalist.json", tmp_path / "other", experiments="dadr", paper_stage1=True, task_weight=1.0)
    assert not (tmp_path / "other").exists()  # refused before anything is written


def test_run_folds_trains_the_chosen_folds_and_tables_every_finished_one(phantoms, tmp_path):
    """One job per fold (``--run_folds``): a job trains its folds only; a later job for the other
    fold trains that one alone and tables both; ``all`` trains on every subject and tests nothing; an
    index outside the folds is refused."""
    out = tmp_path / "per_fold"
    settings = dict(folds=2, size=64, dim=8, seg_epochs=1, experiments="mr_bound", iterations_per_epoch=2,
                    unet_channels=[8, 16, 32, 64, 128], figures=False)
    first = run_experiments(phantoms / "datalist.json", out, run_folds=1, **settings)
    assert {r["fold"] for r in first["rows"]} == {1} and first["folds_in_tables"] == {"mr_bound": [1]}
    assert not (out / "mr_bound" / "fold_0").exists()
    assert 'folds in the tables: {"mr_bound": [1]}' in (out / "results.md").read_text()
    model_1 = out / "mr_bound" / "fold_1" / "unet_mr" / "model.pt"
    stamp = model_1.stat().st_mtime_ns
    both = run_experiments(phantoms / "datalist.json", out, run_folds="0", **settings)
    assert {r["fold"] for r in both["rows"]} == {0, 1} and model_1.stat().st_mtime_ns == stamp
    datalist = json.loads((phantoms / "datalist.json").read_text())
    mr_images = sorted(e["image"].split("/")[-1] for e in datalist["target_labelled"] + datalist["target_test"])
    assert sorted(r["image"].split("/")[-1] for r in both["rows"]) == mr_images  # each MR image held out once
    assert run_experiments(phantoms / "datalist.json", out, run_folds=(0, 1), **settings)["rows"] == both["rows"]
    # "all": the recipe once more on every subject, the model to ship; nothing of it is tested or tabled
    assert run_experiments(phantoms / "datalist.json", out, run_folds="1,all", **settings)["rows"] == both["rows"]
    every = out / "mr_bound" / "all"
    sections = json.loads((every / "datalist.json").read_text())
    assert sorted(e["image"].split("/")[-1] for e in sections["target_labelled"]) == mr_images and sections["target_test"] == []
    assert (every / "unet_mr" / "model.pt").is_file() and not list(every.rglob("test_*")) and model_1.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="--run_folds: \\['2'\\] are not all fold indices 0..1 or 'all'"):
        run_experiments(phantoms / "datalist.json", tmp_path / "other", run_folds=2, **settings)
    with pytest.raises(ValueError, match="--run_folds: fold indices from 0 and/or 'all', got 'last'"):
        run_experiments(phantoms / "datalist.json", tmp_path / "other", run_folds="last", **settings)


def test_folds_share_a_model_trained_on_the_ct_alone(phantoms, tmp_path):
    """With the CT not split, a model that sees no MR (``unet_ct_rand``) trains once: the other fold and
    the run on every subject copy it (weights and marker, saying from where), and each fold still
    tests it on its own held-out MR."""
    out = tmp_path / "shared"
    settings = dict(folds=2, size=64, dim=8, seg_epochs=1, experiments="self_training", models="unet_ct_rand", split_source=False,
                    iterations_per_epoch=2, unet_channels=[8, 16, 32, 64, 128], figures=False)
    rows = run_experiments(phantoms / "datalist.json", out, run_folds="0,1,all", **settings)["rows"]
    root = out / "self_training"
    folders = [root / f / "unet_ct_rand" for f in ("fold_0", "fold_1", "all")]
    assert folders[0].joinpath("model.pt").read_bytes() == folders[1].joinpath("model.pt").read_bytes() == folders[2].joinpath("model.pt").read_bytes()
    markers = [json.loads((f / "trained").read_text()) for f in folders]
    trained = [f for f, m in zip(folders, markers) if "copied_from" not in m]
    assert len(trained) == 1 and all(m.get("copied_from") in (None, str(trained[0])) for m in markers)
    assert len({m["train_seconds"] for m in markers}) == 1
    assert [f for f in folders if (f / "checkpoints").exists()] == trained
    for fold in (0, 1):
        held_out = json.loads((root / f"fold_{fold}" / "datalist.json").read_text())["target_test"]
        assert sorted(r["image"].split("/")[-1] for r in rows if r["fold"] == fold) == sorted(e["image"].split("/")[-1] for e in held_out)
        assert (folders[fold] / "test_mr" / "metrics.json").is_file()


@pytest.mark.slow  # make test-all: a research option of the runner
@pytest.mark.parametrize("experiment, teacher, student", [("self_training", "dacgan", "agreement_st"), ("dadr", "dacgan", "dadr_agreement_st"),
                                                         ("dadr", "dadr_style", "dadr_style_st")])
def test_agreement_student_learns_where_two_teachers_agree(phantoms, tmp_path, monkeypatch, experiment, teacher, student):
    """``--models unet_ct_rand,dacgan,agreement_st`` (or DADR's ``dadr_agreement_st``, on a stage 1, or
    ``dadr_style_st``, taught by the randomised CT UNet and DADR's style transfer): both teachers
    pseudo-label the fold's training MR, the student's labels are inside each teacher's mask, and it
    trains on CT + those MR."""
    import bundle.self_training as self_training
    monkeypatch.setattr(self_training, "LIVER_ML", (0.0, float("inf")))  # 1-epoch teachers: keep every mask
    monkeypatch.setattr(self_training, "MAX_MEAN_ENTROPY", float("inf"))
    out = tmp_path / "agree"
    result = run_experiments(phantoms / "datalist.json", out, folds=2, size=64, dim=8, drl_iterations=4, cyclegan_iterations=4,
                             seg_epochs=1, experiments=experiment, models=f"unet_ct_rand,{teacher},{student}", iterations_per_epoch=2,
                             split_source=False, run_folds=0, figures=False)
    assert {r["model"] for r in result["rows"]} == {"unet_ct_rand", teacher, student}
    fold = out / experiment / "fold_0"
    assert (fold / "drl" / "drl.pt").is_file() == (experiment == "dadr")  # content-only images or DADR's translations need a stage 1
    assert (fold / "cyclegan" / "cyclegan.pt").is_file() == (teacher == "dacgan")
    sections = json.loads((fold / "datalist.json").read_text())
    pseudo = json.loads((fold / student / "datalist.json").read_text())["target_pseudo"]
    assert sorted(e["image"] for e in pseudo) == sorted(e["image"] for e in sections["target"])
    for entry in pseudo:
        assert f"{student}/pseudo/masks" in entry["label"]
        agreed = np.asarray(nib.load(entry["label"]).dataobj) > 0
        for teacher in ("teacher_0", "teacher_1"):
            mask = fold / student / "pseudo" / teacher / "masks" / Path(entry["label"]).name
            assert not (agreed & ~(np.asarray(nib.load(mask).dataobj) > 0)).any()
    assert json.loads((fold / student / "trained").read_text())["train_seconds"] > 0


@pytest.mark.slow  # make test-all: a research option of the runner
def test_dadr_experiment_with_the_task_aware_content_space(phantoms, tmp_path, monkeypatch):
    """``--experiments dadr --task_weight 1 --split_source False``: every CT subject trains stage 1
    with its labels (the segmenter is in drl.pt), each MR image is tested once by DADR, DADR with
    appearance randomisation, its self-trained student and the supervised content-only MR bound,
    all on the same stage 1."""
    import bundle.self_training as self_training
    monkeypatch.setattr(self_training, "LIVER_ML", (0.0, float("inf")))  # a 1-epoch teacher's masks: keep them all
    monkeypatch.setattr(self_training, "MAX_MEAN_ENTROPY", float("inf"))
    out = tmp_path / "dadr"
    result = run_experiments(phantoms / "datalist.json", out, folds=2, size=64, dim=8, drl_iterations=4, seg_epochs=1,
                             experiments="dadr", split_source=False, task_weight=1.0, amp="bfloat16", iterations_per_epoch=2,
                             models="dadr,dadr_rand,dadr_rand_st,dadr_mr")
    datalist = json.loads((phantoms / "datalist.json").read_text())
    mr_images = sorted(e["image"] for e in datalist["target_labelled"] + datalist["target_test"])
    assert {r["model"] for r in result["rows"]} == {"dadr", "dadr_rand", "dadr_rand_st", "dadr_mr"}
    assert all(r["stage1_seconds"] > 0 and r["cyclegan_seconds"] is None for r in result["rows"])  # the fold's shared stage 1, timed
    assert "Trained once per fold and shared, min/fold: stage 1 " in (out / "results.md").read_text()
    for model in ("dadr", "dadr_rand", "dadr_rand_st", "dadr_mr"):
        tested = sorted(r["image"].split("/")[-1] for r in result["rows"] if r["model"] == model)
        assert tested == sorted(i.split("/")[-1] for i in mr_images)
    for fold in (0, 1):
        sections = json.loads((out / "dadr" / f"fold_{fold}" / "datalist.json").read_text())
        student = json.loads((out / "dadr" / f"fold_{fold}" / "dadr_rand_st" / "datalist.json").read_text())
        pseudo = student["target_pseudo"]  # the fold's unlabelled training MR, labelled by dadr_rand's masks
        assert sorted(e["image"] for e in pseudo) == sorted(e["image"] for e in sections["target"])
        test_images = {e["image"] for e in sections["target_test"]}
        for entry in pseudo:
            assert entry["image"] not in test_images and "dadr_rand_st/pseudo/masks" in entry["label"]
            assert nib.load(entry["label"]).shape == nib.load(entry["image"]).shape
        assert len(sections["source"]) == len(datalist["source"]) and not sections.get("source_test")
        drl = torch.load(out / "dadr" / f"fold_{fold}" / "drl" / "drl.pt")
        assert any(k.startswith("task_segmenter.") for k in drl)
        model = torch.load(out / "dadr" / f"fold_{fold}" / "dadr" / "model.pt")  # stage 2 took the content path alone
        assert not any("task_segmenter" in k for k in model)
        assert all(torch.equal(model[f"content_path.{k}"], v) for k, v in drl.items() if k.startswith("content_encoders.mr."))
        bound = torch.load(out / "dadr" / f"fold_{fold}" / "dadr_mr" / "model.pt")  # trained on content-only MR: the same frozen path
        assert all(torch.equal(bound[f"content_path.{k}"], v) for k, v in drl.items() if k.startswith("content_encoders.mr."))
    assert "DADR alone" in (out / "results.md").read_text()
    log = [json.loads(line) for line in (out / "dadr" / "fold_0" / "drl" / "validation.jsonl").read_text().splitlines()]
    assert log  # stage 1 validated


@pytest.mark.slow  # make test-all: a research option of the runner
def test_stage1_learns_the_mr_where_the_teachers_agree(phantoms, tmp_path, monkeypatch):
    """``--stage1_pseudo_labels True``: the two teachers train first, their agreed masks of the fold's
    training MR (never a test image) are stage 1's MR pseudo-labels, and stage 1 logs the MR task term.
    The dual path joins the two students of those teachers (content path, images) and is tested as one,
    joined and tested again when a member is retrained."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import bundle.self_training as self_training
    monkeypatch.setattr(self_training, "LIVER_ML", (0.0, float("inf")))  # 1-epoch teachers: keep every mask
    monkeypatch.setattr(self_training, "MAX_MEAN_ENTROPY", float("inf"))
    out = tmp_path / "pseudo_stage1"
    settings = dict(folds=2, size=64, dim=8, drl_iterations=4, cyclegan_iterations=4, seg_epochs=1, experiments="dadr",
                    split_source=False, iterations_per_epoch=2, run_folds=0, figures=False)
    with pytest.raises(ValueError, match="needs --task_weight > 0"):
        run_experiments(phantoms / "datalist.json", out, models="dadr", stage1_pseudo_labels=True, **settings)
    dual = "dadr,unet_ct_rand,dacgan,dadr_agreement_st,agreement_st,dadr_dual_st,dadr_dual_rand"
    with pytest.raises(ValueError, match="learn from \\['agreement_st'\\]"):
        run_experiments(phantoms / "datalist.json", out, models=dual.replace(",agreement_st", ""), stage1_pseudo_labels=True, task_weight=1.0, **settings)
    result = run_experiments(phantoms / "datalist.json", out, models=dual, stage1_pseudo_labels=True, task_weight=1.0, **settings)
    assert {r["model"] for r in result["rows"]} == set(dual.split(","))
    fold = out / "dadr" / "fold_0"
    sections = json.loads((fold / "datalist.json").read_text())
    pseudo = json.loads((fold / "drl" / "datalist.json").read_text())["target_pseudo"]
    assert sorted(e["image"] for e in pseudo) == sorted(e["image"] for e in sections["target"])
    assert not {e["image"] for e in pseudo} & {e["image"] for e in sections["target_test"]}
    assert all("drl/pseudo/masks" in e["label"] for e in pseudo)
    for teacher in ("unet_ct_rand", "dacgan"):
        assert (fold / teacher / "trained").stat().st_mtime < (fold / "drl" / "drl.pt").stat().st_mtime
    tags = [t for f in (fold / "drl" / "tensorboard").glob("events.out.tfevents.*") for t in EventAccumulator(str(f)).Reload().Tags()["scalars"]]
    assert any(tag.endswith("task_mr") for tag in tags), tags
    joined = torch.load(fold / "dadr_dual_st" / "model.pt", weights_only=True)
    members = [torch.load(fold / m / "model.pt", weights_only=True) for m in ("dadr_agreement_st", "agreement_st")]
    assert all(torch.equal(joined[k], v) for k, v in members[0].items() if k != "paths") and joined["paths"].tolist() == [1, 1]
    assert all(torch.equal(joined["image_" + k], v) for k, v in members[1].items() if k.startswith("unet."))
    with_teacher = torch.load(fold / "dadr_dual_rand" / "model.pt", weights_only=True)  # the student + the randomised CT UNet
    teacher = torch.load(fold / "unet_ct_rand" / "model.pt", weights_only=True)
    assert all(torch.equal(with_teacher["image_" + k], v) for k, v in teacher.items() if k.startswith("unet."))
    assert not all(torch.equal(with_teacher[k], joined[k]) for k in joined if k.startswith("image_unet."))
    markers = [json.loads((fold / m / "trained").read_text()) for m in ("dadr_dual_st", "dadr_agreement_st", "agreement_st")]
    assert markers[0]["train_seconds"] == pytest.approx(markers[1]["train_seconds"] + markers[2]["train_seconds"])
    assert markers[0]["precision"] == markers[1]["precision"] == markers[2]["precision"] == "float32"  # its members' (no --amp)
    labelled = (fold / "drl" / "datalist.json").stat().st_mtime_ns
    (fold / "drl" / "drl.pt").unlink()  # a stage 1 stopped before its end: resumed on the MR it started with
    (fold / "results.json").unlink()
    run_experiments(phantoms / "datalist.json", out, models=dual, stage1_pseudo_labels=True, task_weight=1.0, **settings)
    assert (fold / "drl" / "drl.pt").is_file() and (fold / "drl" / "datalist.json").stat().st_mtime_ns == labelled
    tested = (fold / "dadr_dual_st" / "test_mr" / "metrics.json").stat().st_mtime_ns
    retrained = {k: v * 0.5 if k.startswith("unet.") else v for k, v in members[1].items()}  # agreement_st trained again
    torch.save(retrained, fold / "agreement_st" / "model.pt")
    (fold / "results.json").unlink()
    run_experiments(phantoms / "datalist.json", out, models=dual, stage1_pseudo_labels=True, task_weight=1.0, **settings)
    joined = torch.load(fold / "dadr_dual_st" / "model.pt", weights_only=True)
    assert all(torch.equal(joined["image_" + k], v) for k, v in retrained.items() if k.startswith("unet."))
    assert (fold / "dadr_dual_st" / "test_mr" / "metrics.json").stat().st_mtime_ns > tested


def test_experiments_script_names_a_bad_datalist(tmp_path):
    bad = tmp_path / "datalist.json"
    bad.write_text(json.dumps({"source": [{"image": "ct.nii.gz", "label": "ct_liver.nii.gz"}], "target": [{"image": "mr.nii.gz"}]}))
    result = run_script("experiments.py", "--datalist", bad, "--out", tmp_path / "out", "--folds", "2")
    assert result.returncode == 2
    assert f"error: {bad}: has no labelled MR entries" in result.stderr


def test_the_run_on_every_subject_keeps_the_folds_share_of_pseudo_labelled_mr():
    from bundle.experiments import all_subjects_repeat

    ct = [{"image": f"ct_{i}.nii.gz"} for i in range(30)]
    mr = [{"image": f"mr_{i}.nii.gz", "subject": f"mr_{i // 2}"} for i in range(20)]  # 10 subjects, 2 images each
    mr_folds = [[f"mr_{i}" for i in range(k, 10, 2)] for k in (0, 1)]
    assert all_subjects_repeat(10, ct, mr, [[], []], mr_folds) == 5  # the CT unsplit, the MR doubled: half the repeats
    ct_folds = [[f"ct_{i}" for i in range(k, 30, 2)] for k in (0, 1)]
    assert all_subjects_repeat(10, ct, mr, ct_folds, mr_folds) == 10  # both modalities doubled: the same
    assert all_subjects_repeat(1, ct, mr, [[], []], mr_folds) == 1  # never below one


def test_command_line_flags_read_true_and_false_in_any_spelling():
    assert [flag(v, "x") for v in (True, "true", "True", "1", False, "false", "FALSE", "0")] == [True] * 4 + [False] * 4
    with pytest.raises(ValueError, match="--split_source must be True or False, got 'maybe'"):
        flag("maybe", "split_source")
    assert [optional(v) for v in ("null", "None", None, "bfloat16")] == [None, None, None, "bfloat16"]  # --amp null


def test_tables_leave_out_the_models_a_run_did_not_train():
    """``--models dadr``: the DADR table has the DADR row and per-image column, not rows of n/a
    for the models left out."""
    from bundle.tables import tables

    rows = [{"model": "dadr", "test": "mr", "fold": 0, "image": f"/d/mr_{i}_image.nii.gz", "dice": d, "train_seconds": 60.0,
             "stage1_seconds": 120.0} for i, d in enumerate((0.5, 0.7))]
    result, markdown = tables({"dadr": rows})
    table = result["DADR alone and our additions (one stage 1 per fold; the paper's figure beside)"]
    assert list(table) == ["DADR (UNet on content-only CT)"] and table["DADR (UNet on content-only CT)"]["mr"]["dice_mean"] == pytest.approx(0.6)
    assert "n/a" not in markdown and "+ appearance randomisation" not in markdown and "| mr_1_image | 0.700 |" in markdown
    assert "Trained once per fold and shared, min/fold: stage 1 2.0 (not in train min/fold above)." in markdown


def test_long_gan_runs_checkpoint_at_least_every_checkpoint_iterations():
    """A third of a short run (as before); long runs every 500 iterations or less, losing at most
    a few iterations to whole intervals."""
    from bundle.pipeline import CHECKPOINT_ITERATIONS, gan_val_interval

    assert [gan_val_interval(n) for n in (4, 20, 1200, 1500, 2500)] == [1, 6, 400, 500, 500]
    for n in (3500, 10000, 50001):
        interval = gan_val_interval(n)
        assert interval <= CHECKPOINT_ITERATIONS and 0 <= n - (n // interval) * interval < n // interval
    assert gan_val_interval(10000) == 500 and gan_val_interval(1750) == 437


def test_runner_scores_the_synthetic_source_on_the_clean_and_the_stressed_held_out_mr(phantoms, tmp_path):
    """--stress True: the suite is made once in the run folder, and each fold's model is tested on its own
    held-out patients under every shift; the tables gain the robustness table with every variant."""
    out = tmp_path / "stress"
    settings = dict(folds=2, size=64, dim=8, seg_epochs=1, experiments="dadr", models="unet_ct_synth", split_source=False,
                    iterations_per_epoch=2, unet_channels=[8, 16, 32, 64, 128], figures=False, stress=True)
    result = run_experiments(phantoms / "datalist.json", out, **settings)
    assert sorted((out / "stress_suite").iterdir()) == sorted(out / "stress_suite" / v for v in VARIANTS)
    for fold in (0, 1):
        held_out = sorted(e["subject"] for e in json.loads((out / "dadr" / f"fold_{fold}" / "datalist.json").read_text())["target_test"])
        for test in ["mr", *(f"mr/{v}" for v in VARIANTS)]:
            rows = [r for r in result["rows"] if r["fold"] == fold and r["test"] == test]
            assert sorted(r["subject"] for r in rows) == held_out and all(0 <= r["dice"] <= 1 for r in rows)
    markdown = (out / "results.md").read_text()
    assert "Robustness suite" in markdown and all(v in markdown for v in VARIANTS)
