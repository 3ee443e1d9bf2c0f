"""The speed benchmark's promised output (timings themselves are never asserted: they belong to benchmarks)."""

from __future__ import annotations

import re

from conftest import run_script

from bundle.benchmark import benchmark_drl


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
