"""Stage-1 training: the DRL iteration on phantoms, the MONAI bundle workflow, resume (torchrun: test_distributed.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from ignite.engine import Events
from torch.utils.data import DataLoader

from bundle.data.slices import NO_LABEL, UnpairedSlices, load_slices, load_target_slices
from bundle.engines import DRLTrainer
from bundle.losses import AdversarialLoss, ContentAdversarialLoss, DRLLoss
from bundle.networks import DomainDiscriminators, DRLModule

SMALL = ["--image_size", "64", "--dim", "8", "--n_res", "2", "--mlp_dim", "32", "--val_interval", "10", "--n_val_slices", "8"]


def make_trainer(phantoms, iterations: int, batch: int = 2, content_adv: bool = False, **kwargs) -> DRLTrainer:
    torch.manual_seed(0)
    ct = load_slices(phantoms / "datalist.json", "source", "ct", 64)["image"]
    mr = load_slices(phantoms / "datalist.json", "target", "mr", 64)["image"]
    network = DRLModule(dim=8, n_res=2, mlp_dim=32, shared_res=1 if content_adv else 0)
    discriminators = DomainDiscriminators(dim=8, content_channels=32 if content_adv else 0)
    adam = dict(lr=1e-3, betas=(0.5, 0.999), weight_decay=1e-4)
    loader = DataLoader(UnpairedSlices(ct, mr, iterations * batch, seed=0), batch_size=batch)
    return DRLTrainer("cpu", 1, loader, network, discriminators, torch.optim.Adam(network.parameters(), **adam),
                      torch.optim.Adam(discriminators.parameters(), **adam), loss=DRLLoss(delta=1.0), **kwargs)


def test_every_loss_term_is_finite_and_decreases_on_phantoms(phantoms):
    """Mean of the last 10 iterations below the first 10 for every term; reconstruction by far."""
    trainer = make_trainer(phantoms, iterations=100)
    history = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: history.append(e.state.output["losses"]))
    trainer.run()
    assert len(history) == 100 and set(history[0]) == {"recon_ct", "recon_mr", "latent_ct2mr", "latent_mr2ct", "adv_g", "adv_d", "total"}
    for term in history[0]:
        values = torch.tensor([h[term] for h in history])
        assert torch.isfinite(values).all(), term
        first, last = values[:10].mean(), values[-10:].mean()
        assert last < first, (term, first, last)
        if term.startswith("recon") or term == "total":
            assert last < 0.7 * first, (term, first, last)


def test_content_discriminator_option_adds_a_finite_term(phantoms):
    trainer = make_trainer(phantoms, iterations=3, content_adv=True)
    trainer.run()
    losses = trainer.state.output["losses"]
    assert "adv_content" in losses and torch.isfinite(torch.tensor(losses["adv_content"]))
    shared = trainer.network.content_encoders["ct"].model[-1]
    assert shared is trainer.network.content_encoders["mr"].model[-1]  # one module, two encoders


def test_nan_loss_stops_with_a_clear_error(phantoms):
    trainer = make_trainer(phantoms, iterations=2)
    bad = {"ct": torch.full((2, 1, 64, 64), float("nan")), "mr": torch.zeros(2, 1, 64, 64)}
    trainer.state.device, trainer.state.iteration = torch.device("cpu"), 7
    before = [p.clone() for p in trainer.discriminators.parameters()]
    with pytest.raises(FloatingPointError, match="non-finite DRLTrainer loss at iteration 7"):
        trainer._iteration(trainer, bad)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.discriminators.parameters()))  # no step taken with NaN


def run_bundle(tmp_path, run: str, iterations: int, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/drl_train.yaml",
            "--dataset_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / run), "--drl_path", str(tmp_path / run / "drl.pt"),
            "--phantom_subjects", "2", "--max_iterations", str(iterations), *SMALL, *extra]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_slice_cache_holds_the_slices_stage1_reads_and_mr_pseudo_labels_on_request(phantoms, tmp_path):
    """A slice cache gives load_slices' slices (8-bit images, exact labels), a fold's MR subjects,
    and MR labels only when made from a pseudo-labelled section; stage 1 trains its MR task term from it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bundle.data.slices import load_slice_cache, save_slice_cache
    from bundle.errors import DataError

    datalist = json.loads((phantoms / "datalist.json").read_text())
    absolute = {k: [{**e, **{f: str(phantoms / e[f]) for f in ("image", "label") if f in e}} for e in v] for k, v in datalist.items()}
    pseudo = tmp_path / "pseudo.json"
    pseudo.write_text(json.dumps(absolute | {"target_pseudo": absolute["target_labelled"]}))  # stand-ins for pseudo-labels
    plain, labelled = tmp_path / "plain.pt.xz", tmp_path / "pseudo.pt.xz"
    save_slice_cache(pseudo, plain, 64)
    save_slice_cache(pseudo, labelled, 64, mr_pseudo_labels=True)
    ct, cached_ct = load_slices(pseudo, "source", "ct", 64, with_label=True), load_slice_cache(plain, "ct", with_label=True)
    assert torch.allclose(ct["image"], cached_ct["image"], atol=0.5 / 127.5 + 1e-6) and torch.equal(ct["label"], cached_ct["label"])
    assert load_slice_cache(plain, "mr")["image"].shape == load_slices(pseudo, "target", "mr", 64)["image"].shape
    with pytest.raises(DataError, match="has no MR labels"):
        load_slice_cache(plain, "mr", with_label=True)
    mr = load_target_slices(pseudo, 64, pseudo_labels=True)
    assert torch.equal(load_slice_cache(labelled, "mr", with_label=True)["label"], mr["label"])
    first = absolute["target_labelled"][0].get("subject") or Path(absolute["target_labelled"][0]["image"]).name
    assert len(load_slice_cache(labelled, "mr", subjects=[first])["image"]) == int((mr["subject"] == 0).sum())
    phases = tmp_path / "phases.json"  # one subject, two volumes (as the phases of a multi-phasic MR)
    phases.write_text(json.dumps(absolute | {"target": [{**e, "subject": "one"} for e in absolute["target"][:2]]}))
    save_slice_cache(phases, tmp_path / "phases.pt.xz", 64)
    assert len(load_slice_cache(tmp_path / "phases.pt.xz", "mr", subjects=["one"])["image"]) == len(load_slices(phases, "target", "mr", 64)["image"])
    with pytest.raises(DataError, match="has no subject 'nobody'"):
        load_slice_cache(labelled, "mr", subjects=["nobody"])
    run_bundle(tmp_path, "cached", 2, "--slice_cache", str(labelled), "--task_weight", "1.0", "--target_pseudo_labels", "True")
    tags = [t for f in (tmp_path / "cached/tensorboard").glob("events.out.tfevents.*") for t in EventAccumulator(str(f)).Reload().Tags()["scalars"]]
    assert any(tag.endswith("task_mr") for tag in tags), tags


def test_mr_without_pseudo_labels_still_adapt_and_the_task_term_leaves_their_slices_out(phantoms, tmp_path):
    """Stage 1's MR with --target_pseudo_labels: every target MR, NO_LABEL on the slices of one whose
    pseudo-label failed the filters (also in a slice cache); the MR task term is that of the labelled
    slices alone, and 0 (still differentiable) on a batch without any."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from bundle.data.slices import load_slice_cache, save_slice_cache
    from bundle.errors import DataError

    datalist = json.loads((phantoms / "datalist.json").read_text())
    absolute = {k: [{**e, **{f: str(phantoms / e[f]) for f in ("image", "label") if f in e}} for e in v] for k, v in datalist.items()}
    assert len(absolute["target"]) >= 2
    pseudo = tmp_path / "pseudo.json"  # the first target MR kept its pseudo-label (its mask as a stand-in), the others did not
    pseudo.write_text(json.dumps(absolute | {"target_pseudo": [e for e in absolute["target_labelled"] if e["image"] == absolute["target"][0]["image"]]}))
    mr = load_target_slices(pseudo, 64, pseudo_labels=True)
    plain = load_slices(pseudo, "target", "mr", 64)
    assert torch.equal(mr["image"], plain["image"]) and torch.equal(mr["subject"], plain["subject"])
    first = mr["subject"] == 0
    truth = load_slices(phantoms / "datalist.json", "target_labelled", "mr", 64, with_label=True)
    assert torch.equal(mr["label"][first], truth["label"][truth["subject"] == 0]) and mr["label"][first].max() == 1
    assert (~first).any() and (mr["label"][~first] == NO_LABEL).all()
    save_slice_cache(pseudo, tmp_path / "pseudo.pt.xz", 64, mr_pseudo_labels=True)
    assert torch.equal(load_slice_cache(tmp_path / "pseudo.pt.xz", "mr", with_label=True)["label"], mr["label"])
    others = [e.get("subject") or Path(e["image"]).name for e in absolute["target"][1:]]
    with pytest.raises(DataError, match="none of them kept a pseudo-label"):  # a fold of MR without one: no task term to train
        load_slice_cache(tmp_path / "pseudo.pt.xz", "mr", with_label=True, subjects=others)

    torch.manual_seed(0)
    network = DRLModule(dim=8, n_res=2, mlp_dim=32, task_segmenter=UNet(2, 1, 2, channels=(8, 16), strides=(2,)))
    ct = load_slices(phantoms / "datalist.json", "source", "ct", 64, with_label=True)
    rows = torch.cat([torch.nonzero(first)[:1, 0], torch.nonzero(~first)[:1, 0]])  # one labelled MR slice, one without
    x_ct, x_mr, label_mr = ct["image"][10:12], mr["image"][rows], mr["label"][rows]
    styles = torch.randn(2, 8), torch.randn(2, 8)
    out = network(x_ct, x_mr, *styles, segment_mr=True)
    loss = DRLLoss(task_weight=1.0)
    terms = loss(out, x_ct, x_mr, *styles, torch.tensor(0.0), label_ct=ct["label"][10:12], label_mr=label_mr)
    alone = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(out["task_logits_mr"][:1].float(), label_mr[:1])
    assert torch.isclose(terms["task_mr"], alone)
    none = loss(out, x_ct, x_mr, *styles, torch.tensor(0.0), label_ct=ct["label"][10:12], label_mr=torch.full_like(label_mr, NO_LABEL))
    assert none["task_mr"] == 0 and torch.isfinite(none["total"])
    none["total"].backward()


def test_mr_pseudo_labels_without_the_task_term_are_refused_before_any_data_is_read(tmp_path):
    """--target_pseudo_labels trains only the task term: with --task_weight 0 it is refused at start-up."""
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/drl_train.yaml",
            "--dataset_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--target_pseudo_labels", "True"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "error: --target_pseudo_labels: needs --task_weight > 0" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_bundle_run_checkpoints_and_resumes_exactly(tmp_path):
    """20 iterations in one go equal 10 iterations, a stop, and a resumed run to 20."""
    run_bundle(tmp_path, "straight", 20)
    run_bundle(tmp_path, "resumed", 10)
    assert sorted(p.name for p in (tmp_path / "resumed/checkpoints").iterdir()) == ["drl_checkpoint_10.pt"]
    result = run_bundle(tmp_path, "resumed", 20)
    assert "resumed from" in result.stdout + result.stderr
    straight, resumed = torch.load(tmp_path / "straight/drl.pt"), torch.load(tmp_path / "resumed/drl.pt")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    checkpoint = torch.load(tmp_path / "resumed/checkpoints/drl_checkpoint_20.pt")
    assert {"network", "discriminators", "g_optimizer", "d_optimizer", "g_lr_scheduler", "d_lr_scheduler", "trainer"} <= set(checkpoint)
    validation = [json.loads(line) for line in (tmp_path / "straight/validation.jsonl").read_text().splitlines()]
    assert [v["iteration"] for v in validation] == [10, 20] and 0 <= validation[-1]["content_domain_acc"] <= 1
    assert len(list((tmp_path / "straight/images").glob("drl_*.png"))) == 2
    assert list((tmp_path / "straight/tensorboard").glob("events.out.tfevents.*"))


def test_the_loss_splits_real_and_fake_scores_and_the_content_game_is_injected(phantoms):
    scores = [torch.randn(4, 1, 5, 5), torch.randn(4, 1, 3, 3)]
    loss = AdversarialLoss()
    assert torch.equal(loss.discriminator_on_batch(scores, 2), loss.discriminator([s[:2] for s in scores], [s[2:] for s in scores]))
    game = ContentAdversarialLoss()
    trainer = make_trainer(phantoms, iterations=2, content_adversarial=game)
    assert trainer.content_adversarial is game


def test_task_aware_content_space_trains_both_content_encoders_through_the_ct_labels(phantoms):
    """The task term reaches the CT and MR content encoders (through the CT -> MR translations)
    and the segmenter, and adds task_weight * Ltask to the total; without labels it refuses."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    ct = load_slices(phantoms / "datalist.json", "source", "ct", 64, with_label=True)
    mr = load_slices(phantoms / "datalist.json", "target", "mr", 64)["image"]
    item = UnpairedSlices(ct["image"], mr, 4, source_label=ct["label"])[0]
    assert item["ct_label"].shape == (1, 64, 64) and set(item["ct_label"].unique().tolist()) <= {0.0, 1.0}
    segmenter = UNet(2, 1, 2, channels=(8, 16), strides=(2,))
    network = DRLModule(dim=8, n_res=2, mlp_dim=32, task_segmenter=segmenter)
    x_ct, label_ct, x_mr = ct["image"][10:12], ct["label"][10:12], mr[5:7]
    styles = torch.randn(2, 8), torch.randn(2, 8)
    out = network(x_ct, x_mr, *styles)
    assert out["task_logits"].shape == (4, 2, 64, 64)  # content-only CT, then content-only CT -> MR
    adv = torch.tensor(0.0)
    paper, task_aware = DRLLoss(task_weight=0.0), DRLLoss(task_weight=2.0)
    terms = task_aware(out, x_ct, x_mr, *styles, adv, label_ct=label_ct)
    assert torch.isclose(terms["total"] - paper(out, x_ct, x_mr, *styles, adv, label_ct=label_ct)["total"], 2.0 * terms["task"])
    terms["task"].backward()
    for module in (network.content_encoders["ct"], network.content_encoders["mr"], segmenter):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None or not p.grad.any() for p in network.style_encoders.parameters())  # the style path plays no part
    with pytest.raises(ValueError, match="no labels"):
        paper(out, x_ct, x_mr, *styles, adv)


def test_pseudo_labelled_mr_slices_enter_the_task_term_through_the_mr_content_path(phantoms):
    """``segment_mr``: the segmenter also sees the content-only MR slices (the CT logits unchanged),
    ``task_mr`` joins the total at ``task_weight``, and its gradient reaches the MR content encoder
    and the segmenter but not the CT encoder; without pseudo-labels or a segmenter it refuses."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    ct = load_slices(phantoms / "datalist.json", "source", "ct", 64, with_label=True)
    mr = load_slices(phantoms / "datalist.json", "target_labelled", "mr", 64, with_label=True)  # stand-ins for pseudo-labels
    item = UnpairedSlices(ct["image"], mr["image"], 4, source_label=ct["label"], target_label=mr["label"])[0]
    assert item["mr_label"].shape == (1, 64, 64)
    with pytest.raises(ValueError, match="2 MR pseudo-labels for"):
        UnpairedSlices(ct["image"], mr["image"], 4, target_label=mr["label"][:2])
    segmenter = UNet(2, 1, 2, channels=(8, 16), strides=(2,))
    network = DRLModule(dim=8, n_res=2, mlp_dim=32, task_segmenter=segmenter)
    x_ct, label_ct = ct["image"][10:12], ct["label"][10:12]
    x_mr, label_mr = mr["image"][5:7], mr["label"][5:7]
    styles = torch.randn(2, 8), torch.randn(2, 8)
    out = network(x_ct, x_mr, *styles, segment_mr=True)
    assert out["task_logits_mr"].shape == (2, 2, 64, 64)
    assert torch.allclose(out["task_logits"], network(x_ct, x_mr, *styles)["task_logits"], atol=1e-5)
    adv = torch.tensor(0.0)
    terms = DRLLoss(task_weight=2.0)(out, x_ct, x_mr, *styles, adv, label_ct=label_ct, label_mr=label_mr)
    paper = DRLLoss(task_weight=0.0)(out, x_ct, x_mr, *styles, adv, label_ct=label_ct, label_mr=label_mr)
    assert torch.isclose(terms["total"] - paper["total"], 2.0 * (terms["task"] + terms["task_mr"]))
    terms["task_mr"].backward()
    for module in (network.content_encoders["mr"], segmenter):
        assert sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None) > 0
    assert all(p.grad is None or not p.grad.any() for p in network.content_encoders["ct"].parameters())
    with pytest.raises(ValueError, match="no pseudo-labels"):
        DRLLoss(task_weight=1.0)(out, x_ct, x_mr, *styles, adv, label_ct=label_ct)
    with pytest.raises(ValueError, match="needs a task segmenter"):
        DRLModule(dim=8, n_res=2, mlp_dim=32)(x_ct, x_mr, *styles, segment_mr=True)

