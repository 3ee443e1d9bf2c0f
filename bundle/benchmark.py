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

from bundle.engines import DRLTrainer
from bundle.networks import DomainDiscriminators, DRLModule

__all__ = ["benchmark_drl", "benchmark_inference"]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
        times = []
        for i in range(warmup + iters):
            start = time.perf_counter()
            runner.segment(tmp / "in/volume.nii.gz")
            if i >= warmup:
                times.append(time.perf_counter() - start)
        dev = torch.device(parser.get_parsed_content("device"))
    return {"times": times, "median": statistics.median(times), "peak_mem_mb": _peak_memory_mb(dev)}
