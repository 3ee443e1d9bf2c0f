"""Checkpoints of stage 1 and stage 2: a kill -9 loses at most an epoch, files stay atomic and pruned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from ignite.engine import Engine, Events

from bundle.checkpoint import AtomicCheckpoint, checkpoints, training_seconds

SMALL_DRL = ["--image_size", "64", "--dim", "8", "--n_res", "2", "--mlp_dim", "32", "--dis_layers", "3", "--phantom_subjects", "2"]
SMALL_SEG = ["--image_size", "64", "--adaptation", "none", "--unet_channels", "[8,16,32,64,128]", "--phantom_subjects", "2"]


def start(config: str, out, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", f"configs/{config}", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def kill_after_first_checkpoint(process: subprocess.Popen, folder, prefix: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not checkpoints(folder, prefix):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_kill_9_during_training_resumes_from_the_last_checkpoint(phantoms, tmp_path, stage):
    if stage == "stage1":
        folder, prefix, final = tmp_path / "run/checkpoints", "drl", tmp_path / "run/drl.pt"
        args = ("drl_train.yaml", tmp_path, "--dataset_dir", str(phantoms), "--output_dir", str(tmp_path / "run"),
                "--drl_path", str(final), "--max_iterations", "120", "--val_interval", "20", "--n_val_slices", "8", *SMALL_DRL)
    else:
        folder, prefix, final = tmp_path / "run/checkpoints", "seg", tmp_path / "models/model.pt"
        args = ("train.yaml", tmp_path, "--dataset_dir", str(phantoms), "--output_dir", str(tmp_path / "run"),
                "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "12", *SMALL_SEG)
    kill_after_first_checkpoint(start(*args), folder, prefix)
    assert not final.exists()  # a killed run leaves no weights that look finished
    killed_at = int(checkpoints(folder, prefix)[-1].stem.rsplit("_", 1)[1])
    resumed = start(*args)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert f"(iteration {killed_at})" in output and "resumed from" in output
    assert final.is_file() and all(torch.isfinite(v).all() for v in torch.load(final, weights_only=True).values() if v.is_floating_point())
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    if stage == "stage2":
        assert checkpoints(folder, prefix) == []  # a finished stage 2 leaves model.pt only: the next run starts afresh


def _engine_with_checkpoints(folder, n_saved: int, epochs: int) -> tuple[Engine, torch.nn.Linear]:
    layer = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: layer.weight.data.add_(1.0))
    AtomicCheckpoint(str(folder), {"layer": layer}, n_saved=n_saved, prefix="t").attach(engine)
    engine.run([0], max_epochs=epochs)
    return engine, layer


def test_keep_checkpoints_holds_across_restarts_and_a_damaged_latest_falls_back(tmp_path, caplog):
    _engine_with_checkpoints(tmp_path, n_saved=2, epochs=3)
    _engine_with_checkpoints(tmp_path, n_saved=2, epochs=5)  # resumes at 3, saves 4 and 5
    assert [p.name for p in checkpoints(tmp_path, "t")] == ["t_checkpoint_4.pt", "t_checkpoint_5.pt"]
    latest = checkpoints(tmp_path, "t")[-1]
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    layer = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    AtomicCheckpoint(str(tmp_path), {"layer": layer}, n_saved=2, prefix="t").attach(engine)
    seen = []
    engine.add_event_handler(Events.STARTED, lambda e: seen.append(e.state.iteration))  # after the resume
    engine.run([0], max_epochs=6)
    assert seen[-1] == 4 and f"{latest}: cannot be read" in caplog.text


def test_an_epoch_is_checkpointed_only_after_its_validation(tmp_path):
    """A run killed while validating must redo that epoch's validation when it resumes."""
    layer = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    validated = []

    def validate(e):
        if e.state.epoch == 2:
            raise KeyboardInterrupt  # killed while validating epoch 2
        validated.append(e.state.epoch)

    AtomicCheckpoint(str(tmp_path), {"layer": layer}, n_saved=5, prefix="v").attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, validate)  # attached after, as the configs' handlers are
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=3)
    assert [p.name for p in checkpoints(tmp_path, "v")] == ["v_checkpoint_1.pt"] and validated == [1]


def test_a_resumed_training_records_the_wall_time_of_every_run(tmp_path):
    """``<final>.json`` counts the runs before a resume (up to the checkpoint it resumed from), not the last one alone."""
    layer, final = torch.nn.Linear(2, 2), tmp_path / "model.pt"

    def run(epochs: int, objects: dict) -> None:
        engine = Engine(lambda e, b: time.sleep(0.2))
        AtomicCheckpoint(str(tmp_path), objects, n_saved=2, prefix="w", network=layer, final_path=str(final)).attach(engine)
        engine.run([0], max_epochs=epochs)

    run(3, {"layer": layer})  # 3 epochs of 0.2 s
    first = training_seconds(final)
    assert first["before_this_run"] == 0.0 and 0.6 <= first["train_seconds"] < 5 and first["iterations"] == 3
    run(5, {"layer": layer})  # resumes at epoch 3: 2 more epochs
    second = training_seconds(final)
    assert 0.6 <= second["before_this_run"] <= first["train_seconds"] and second["train_seconds"] >= second["before_this_run"] + 0.4
    assert second["iterations"] == 5
    latest = checkpoints(tmp_path, "w")[-1]  # a checkpoint from before the wall clock was saved still resumes
    state = torch.load(latest, weights_only=True)
    del state["wall_clock"]
    torch.save(state, latest)
    run(6, {"layer": layer})
    third = training_seconds(final)
    assert third["before_this_run"] == 0.0 and third["iterations"] == 6 and 0.2 <= third["train_seconds"] < 5
    assert training_seconds(tmp_path / "none.pt") == {}
