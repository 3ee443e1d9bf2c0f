"""Speed and memory of the stage-1 iteration, measured on the real trainer code path."""

from __future__ import annotations

import resource
import statistics
import time

import torch
from torch.utils.data import DataLoader

from bundle.engines import DRLTrainer
from bundle.networks import DomainDiscriminators, DRLModule

__all__ = ["benchmark_drl"]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def benchmark_drl(size: int = 128, dim: int = 64, batch: int = 1, iters: int = 10, warmup: int = 2, amp: str | None = None,
                  channels_last: bool = True, device: str | None = None, seed: int = 0) -> dict:
    """Seconds per full D+G iteration (``DRLTrainer._iteration``) at the paper's architecture
    (n_down 2, n_res 4, style 8, MLP 256, 3-scale discriminators with 4 layers), 1-channel images.

    Returns ``{"times": [...], "median": s, "peak_mem_mb": MB}``.
    """
    torch.manual_seed(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        trainer._iteration(trainer, batch_data)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"times": times, "median": statistics.median(times), "peak_mem_mb": _peak_memory_mb(device)}
