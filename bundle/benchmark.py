"""Speed and memory of the hot paths (stage-1 iteration, volume inference), on the real code paths."""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

import torch
from monai.bundle import ConfigParser
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from bundle.engines import DRLTrainer
from bundle.networks import DomainDiscriminators, DRLModule
from bundle.pipeline import CONFIGS

__all__ = ["benchmark_drl", "benchmark_inference", "benchmark_matmul"]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(fn, device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``; on a GPU, with its queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def benchmark_drl(size: int = 128, dim: int = 64, batch: int = 1, iters: int = 10, warmup: int = 2, amp: str | None = None,
                  channels_last: bool | None = None, device: str | None = None, seed: int = 0, profile: bool = False) -> dict:
    """Seconds per full D+G iteration (``DRLTrainer._iteration``) at the paper's architecture
    (n_down 2, n_res 4, style 8, MLP 256, 3-scale discriminators with 4 layers), 1-channel images.

    ``channels_last``: ``None`` follows drl_train.yaml (on CUDA only).
    Returns ``{"times": [...], "median": s, "peak_mem_mb": MB, "gflop": GFLOP per iteration, "channels_last": bool}``
    (convolutions and matrix products, forward and backward, counted by torch's ``FlopCounterMode``
    on one extra, untimed iteration); with ``profile``, also ``"profile"``: torch.profiler's
    table of the operators that took the most time over ``iters`` further iterations.
    """
    torch.manual_seed(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = DRLModule(dim=dim).to(device, memory_format=memory_format)
    discriminators = DomainDiscriminators(dim=dim).to(device, memory_format=memory_format)
    adam = dict(lr=1e-4, betas=(0.5, 0.999), weight_decay=1e-4, fused=True)
    batch_data = {"ct": torch.rand(batch, 1, size, size) * 2 - 1, "mr": torch.rand(batch, 1, size, size) * 2 - 1}
    trainer = DRLTrainer(device, 1, DataLoader([batch_data], batch_size=None), network, discriminators,
                         torch.optim.Adam(network.parameters(), **adam), torch.optim.Adam(discriminators.parameters(), **adam),
                         amp_dtype=amp, channels_last=channels_last)
    trainer.state.device = device
    times = []
    for i in range(warmup + iters):
        trainer.state.iteration = i
        seconds = _timed(lambda: trainer._iteration(trainer, batch_data), device)
        if i >= warmup:
            times.append(seconds)
    peak = _peak_memory_mb(device)
    with FlopCounterMode(display=False) as counter:
        trainer._iteration(trainer, batch_data)
    result = {"times": times, "median": statistics.median(times), "peak_mem_mb": peak, "gflop": counter.get_total_flops() / 1e9,
              "channels_last": channels_last}
    if profile:
        with torch.profiler.profile() as profiler:
            for _ in range(iters):
                trainer._iteration(trainer, batch_data)
        result["profile"] = profiler.key_averages().table(sort_by="self_device_time_total" if device.type == "cuda" else "self_cpu_time_total", row_limit=15)
    return result


def benchmark_matmul(n: int = 2048, iters: int = 10, dtype: str = "float32", device: str | None = None) -> dict:
    """The machine's arithmetic ceiling: GFLOP/s of an ``n`` x ``n`` matrix product (median of ``iters``).

    A training iteration cannot run faster than its FLOP count over this rate.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a, b = (torch.randn(n, n, device=device, dtype=getattr(torch, dtype)) for _ in range(2))
    times = [_timed(lambda: a @ b, device) for _ in range(iters + 1)][1:]
    median = statistics.median(times)
    return {"times": times, "median": median, "gflops": 2 * n**3 / median / 1e9}


def benchmark_inference(shape: tuple[int, int, int] = (256, 256, 40), iters: int = 5, warmup: int = 1, device: str | None = None,
                        seed: int = 0, **overrides) -> dict:
    """Seconds per volume, end to end (read, preprocess, infer every slice, invert, write both outputs),
    through ``configs/inference.yaml`` at its network sizes (the shipped model's) unless overridden.

    The weights are random: speed does not depend on them. Returns ``{"times", "median", "peak_mem_mb"}``.
    """
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        volume = np.random.default_rng(seed).gamma(2.0, 100.0, size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 6.0, 1.0])), str(tmp / "in/volume.nii.gz"))
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "inference.yaml"))
        parser.update({"dataset_dir": str(tmp / "in"), "output_dir": str(tmp / "out"), **overrides})
        if device is not None:
            parser["device"] = f"$torch.device('{device}')"
        runner = parser.get_parsed_content("segment_volumes")
        (tmp / "out").mkdir()
        dev = torch.device(parser.get_parsed_content("device"))
        times = [_timed(lambda: runner.segment(tmp / "in/volume.nii.gz"), dev) for _ in range(warmup + iters)][warmup:]
    return {"times": times, "median": statistics.median(times), "peak_mem_mb": _peak_memory_mb(dev)}
