"""Every training stage under torchrun: 2 processes with gloo on the CPU, against 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from bundle.networks import DRLModule

SMALL_GAN = ["--image_size", "64", "--dim", "8", "--n_res", "2", "--mlp_dim", "32", "--val_interval", "10", "--n_val_slices", "8"]
# stage 2, made comparable step for step: no random augmentation, slices in order, SGD on the
# cross-entropy alone (a Dice over the batch is not the mean of the ranks' Dice over their shares)
STAGE2 = ["--image_size", "64", "--dim", "8", "--n_res", "2", "--mlp_dim", "32", "--unet_channels", "[8,16,32,64,128]",
          "--adaptation", "dadr", "--max_epochs", "1", "--iterations_per_epoch", "2", "--learning_rate", "0.1",
          "--optimizer#_target_", "torch.optim.SGD", "--loss#lambda_dice", "0", "--train#augmentation#transforms", "[]"]


def torchrun(configs: list[str], *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=<nproc> -m monai.bundle run training`` with ``configs``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "monai.bundle", "run", "training",
               "--config_file", str(configs), *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"stdout: ...{result.stdout[-2000:]}\nstderr: ...{result.stderr[-3000:]}"  # the logs say when it failed
    return result


def one_process(config: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config, *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow  # make test-all: stage 1's torchrun config on one process and stage 2 on two cover the launcher
def test_stage1_on_two_processes(tmp_path):
    torchrun(["configs/drl_train.yaml", "configs/multi_gpu_drl_train.yaml"], "--dataset_dir", tmp_path / "data", "--output_dir", tmp_path / "out",
             "--drl_path", tmp_path / "drl.pt", "--phantom_subjects", "2", "--max_iterations", "20", *SMALL_GAN)
    assert (tmp_path / "drl.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "out/checkpoints").iterdir()) == ["drl_checkpoint_10.pt", "drl_checkpoint_5.pt"]


def test_stage1_torchrun_config_on_one_process(tmp_path):
    """--nproc_per_node=1 (one GPU of a node) still forms a process group: DDP and the sampler need one."""
    torchrun(["configs/drl_train.yaml", "configs/multi_gpu_drl_train.yaml"], "--dataset_dir", tmp_path / "data", "--output_dir", tmp_path / "out",
             "--drl_path", tmp_path / "drl.pt", "--phantom_subjects", "2", "--max_iterations", "5", *SMALL_GAN[:8], "--val_interval", "5",
             "--n_val_slices", "4", nproc=1)
    assert (tmp_path / "drl.pt").is_file()


def test_stage1_under_torchrun_refuses_a_time_limit_it_cannot_keep(tmp_path):
    """--max_minutes stops each rank at its own iteration (the others would wait forever): refused, not ignored."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run", "training",
               "--config_file", "['configs/drl_train.yaml','configs/multi_gpu_drl_train.yaml']", "--dataset_dir", str(tmp_path / "data"),
               "--output_dir", str(tmp_path / "out"), "--max_minutes", "1", *SMALL_GAN]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert "error: --max_minutes: not under torchrun" in result.stderr
    assert not (tmp_path / "out" / "drl.pth").exists()


def test_stage2_on_two_processes_steps_like_one_process_with_the_same_global_batch(phantoms, tmp_path):
    """Two ranks with half of a global batch of 4 each (content-only images computed half by each
    rank) end with the weights of one process with batches of 4, and far from batches of 2;
    rank 0 alone logs and writes model.pt."""
    torch.manual_seed(0)
    torch.save(DRLModule(dim=8, n_res=2, mlp_dim=32, shared_res=1, image_size=64).state_dict(), tmp_path / "drl.pth")
    common = ["--dataset_dir", phantoms, "--drl_path", tmp_path / "drl.pth", *STAGE2]
    ranks = torchrun(["configs/train.yaml", "configs/multi_gpu_train.yaml"], "--output_dir", tmp_path / "two", "--batch_size", "4",
                     "--train#sampler#shuffle", "False", *common)
    single = one_process("configs/train.yaml", "--output_dir", tmp_path / "one", "--batch_size", "4", "--train#dataloader#shuffle", "False", *common)
    one_process("configs/train.yaml", "--output_dir", tmp_path / "other", "--batch_size", "2", "--train#dataloader#shuffle", "False", *common)
    two, one, two_batches = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("two", "one", "other"))
    assert two.keys() == one.keys()
    unet = [k for k in one if k.startswith("unet.")]
    assert max((two[k] - one[k]).abs().max().item() for k in unet) < 1e-5  # measured: 1e-6
    assert max((two_batches[k] - one[k]).abs().max().item() for k in unet) > 1e-4  # another batch moves them visibly (1.4e-3)
    for result in (ranks, single):  # one line per iteration: rank 1's logging handlers are disabled
        assert [line.split("Iter: ")[1][:3] for line in (result.stdout + result.stderr).splitlines() if "train_loss:" in line] == ["1/2", "2/2"]
    assert (ranks.stdout + ranks.stderr).count("weights written to") == 1
    assert not list((tmp_path / "two/checkpoints").iterdir())  # removed by rank 0 once model.pt is written


def test_stage2_refuses_a_global_batch_the_ranks_cannot_share(phantoms, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run", "training",
               "--config_file", "['configs/train.yaml','configs/multi_gpu_train.yaml']", "--dataset_dir", str(phantoms),
               "--output_dir", str(tmp_path / "out"), "--batch_size", "3", *map(str, STAGE2[:8])]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert "error: --batch_size: 3 is not a multiple of the 2 processes" in result.stderr


@pytest.mark.slow  # make test-all: the stage-1 and stage-2 torchrun tests cover the same launcher
def test_cyclegan_on_two_processes(tmp_path):
    """The DACGAN baseline's CycleGAN with the stage-1 multi-GPU config: weights and checkpoints
    written once, one validation record per validation (rank 0's)."""
    configs = ["configs/drl_train.yaml", "configs/cyclegan_train.yaml", "configs/multi_gpu_drl_train.yaml"]
    torchrun(configs, "--dataset_dir", tmp_path / "data", "--output_dir", tmp_path / "out", "--phantom_subjects", "2",
             "--max_iterations", "20", *SMALL_GAN)
    weights = torch.load(tmp_path / "out/cyclegan.pth", weights_only=True)
    assert any(k.startswith("generators.ct2mr.") for k in weights) and all(torch.isfinite(v).all() for v in weights.values())
    assert sorted(p.name for p in (tmp_path / "out/checkpoints").iterdir()) == ["drl_checkpoint_10.pt", "drl_checkpoint_5.pt"]
    records = [json.loads(line) for line in (tmp_path / "out/validation.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [5, 10]
