"""The speed benchmark's promised output (timings themselves are never asserted: they belong to benchmarks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_script

from bundle.benchmark import benchmark_drl


@pytest.mark.slow  # make test-all: a benchmark's own run
def test_drl_benchmark_prints_its_last_line_and_counts_the_arithmetic():
    result = run_script("benchmark.py", "drl", "--size", "64", "--dim", "4", "--iters", "1", "--warmup", "0", "--profile", "true")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"drl s/iter=\d+\.\d{3} peak_mem=\d+MB gflop=\d+\.\d gflops=\d+", lines[-1]), lines[-1]
    assert "channels_last=False" in lines[-2]  # CPU default: contiguous tensors
    assert "aten::convolution_backward" in result.stdout  # the profile table came first


def test_flop_count_grows_with_the_square_of_dim():
    """Convolution arithmetic is quadratic in the channel count: doubling dim roughly quadruples it."""
    small, large = (benchmark_drl(size=64, dim=d, iters=1, warmup=0)["gflop"] for d in (2, 4))
    assert 3.0 < large / small < 4.1


# A stand-in with the MUNIT checkout's layout and trainer interface (the real one is non-commercial
# and never enters this project: point MUNIT_DIR at a checkout to run the test below it).
FAKE_TRAINER = '''
import torch
from torch import nn


class MUNIT_Trainer(nn.Module):
    def __init__(self, hyperparameters):
        super().__init__()
        self.conv = nn.Conv2d(hyperparameters["input_dim_a"], hyperparameters["gen"]["dim"], 3)
        self.calls = []

    def dis_update(self, x_a, x_b, hyperparameters):
        self.calls.append(("dis", torch.randn(1).cuda().device.type, hyperparameters["gan_w"]))

    def gen_update(self, x_a, x_b, hyperparameters):
        self.conv(x_a).mean().backward()
        self.calls.append(("gen", x_a.shape[-1], hyperparameters["recon_x_w"]))
'''
FAKE_CONFIG = "gen: {dim: 64, style_dim: 8}\ndis: {dim: 64}\ngan_w: 1\nrecon_x_w: 10\n"


def fake_checkout(folder):
    (folder / "configs").mkdir(parents=True)
    (folder / "trainer.py").write_text(FAKE_TRAINER)
    (folder / "configs/edges2handbags_folder.yaml").write_text(FAKE_CONFIG)
    return folder


@pytest.mark.slow  # make test-all: a benchmark's own run
def test_reference_option_alternates_the_reference_iteration_with_ours_and_prints_the_ratio(tmp_path):
    result = run_script("benchmark.py", "drl", "--size", "64", "--dim", "4", "--iters", "3", "--warmup", "1",
                        "--reference", fake_checkout(tmp_path / "munit"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    match = re.fullmatch(r"drl s/iter=(\d+\.\d{3}) .* reference s/iter=(\d+\.\d{3}) speedup=(\d+\.\d{2})x", lines[-1])
    assert match, lines[-1]
    assert re.fullmatch(r"reference times=\[\d+\.\d{3}, \d+\.\d{3}, \d+\.\d{3}\]", lines[-2])  # the same count as ours
    ours, theirs, ratio = map(float, match.groups())
    assert abs(ratio - theirs / ours) <= 0.01 * ratio + 0.2  # (rounded figures)


def test_reference_runs_at_our_sizes_and_dadr_loss_weights_on_the_cpu(tmp_path):
    from bundle.benchmark import munit_reference_iteration
    iteration = munit_reference_iteration(fake_checkout(tmp_path / "munit"), size=32, dim=4)
    iteration()
    held = next(c.cell_contents for c in iteration.__closure__ if isinstance(c.cell_contents, torch.nn.Module))  # its trainer
    assert held.calls == [("dis", "cpu", 10), ("gen", 32, 25)] and held.conv.out_channels == 4


def test_reference_option_names_a_folder_that_is_not_a_munit_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a MUNIT checkout"):
        benchmark_drl(size=64, dim=4, iters=1, warmup=0, reference=tmp_path)


@pytest.mark.skipif(not os.environ.get("MUNIT_DIR"), reason="MUNIT_DIR (a checkout of github.com/NVlabs/MUNIT) is not set")
def test_the_real_munit_reference_runs_beside_ours():
    result = benchmark_drl(size=64, dim=4, iters=2, warmup=0, reference=os.environ["MUNIT_DIR"])
    assert len(result["reference_times"]) == 2 and result["speedup"] > 0


def test_compile_falls_back_to_eager_with_a_warning_where_it_is_unavailable(phantoms, monkeypatch, caplog):
    from test_drl_training import make_trainer

    def unavailable(self, *args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch.nn.Module, "compile", unavailable)
    trainer = make_trainer(phantoms, iterations=2, compile=True)
    assert trainer.compiled is False and "torch.compile is unavailable here (no C++ compiler)" in caplog.text
    trainer.run()  # eager, to the end
    assert trainer.state.iteration == 2


def test_compile_option_compiles_the_network_and_every_discriminator_in_place(phantoms, monkeypatch):
    from test_drl_training import make_trainer
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compiled.append(self))
    trainer = make_trainer(phantoms, iterations=1, compile=True)
    assert trainer.compiled is True
    assert compiled == [trainer.network, *trainer.discriminators.children()] and len(compiled) >= 3


@pytest.mark.slow  # make test-all: the GPU node's script, on the CPU
def test_gpu_check_script_runs_every_step_tiny_on_the_cpu(tmp_path):
    env = {**os.environ, "SIZE": "64", "DIM": "4", "ITERS": "1", "TRAIN_ITERS": "2", "LIMIT": "2", "DEVICE": "cpu", "COMPILE": "False",
           "OUT": str(tmp_path), "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for pattern in (r"ceiling: matmul gflops=\d+", r"stage 1 eager: drl s/iter=\d+\.\d{3} .*", r"stage 1 largest batch: max_batch=2 .*",
                    r"stage 2: seg .* train slices/s=\d+\.\d content_only slices/s=\d+\.\d .*", r"gpu_check: done in \d+ s.*"):
        assert any(re.match(pattern, line) for line in lines), (pattern, result.stdout[-2000:])
    assert (tmp_path / "drl/drl.pth").stat().st_size > 0
