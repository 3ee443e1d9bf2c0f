"""Speed and memory of the hot paths (stage-1 iteration, volume inference), on the real code paths."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import resource
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import yaml
from monai.bundle import ConfigParser
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from bundle.engines import DRLTrainer
from bundle.networks import DomainDiscriminators, DRLModule
from bundle.pipeline import CONFIGS

__all__ = ["benchmark_drl", "benchmark_inference", "benchmark_matmul", "benchmark_stage2", "largest_drl_batch", "munit_reference_iteration"]

# the MUNIT reference at DADR's loss weights (Ltotal = 25 Lrecon + 10 Ladv + 0.1 Llatent; no
# cycle or perceptual term), 1-channel images; the rest is its own example config
MUNIT_OVERRIDES = {"input_dim_a": 1, "input_dim_b": 1, "gan_w": 10, "recon_x_w": 25, "recon_s_w": 0.1, "recon_c_w": 0.1,
                   "recon_x_cyc_w": 0, "vgg_w": 0, "display_size": 1}


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


@contextlib.contextmanager
def _cuda_calls_stay(device: torch.device):
    """MUNIT's code moves tensors with ``.cuda()``; on a CPU that call returns the tensor itself."""
    if device.type == "cuda":
        yield
        return
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def munit_reference_iteration(reference: str | Path, size: int, dim: int, batch: int = 1, device: str | torch.device = "cpu",
                              seed: int = 0) -> Callable[[], None]:
    """One iteration (``dis_update`` + ``gen_update``) of the MUNIT reference trainer from a
    checkout of github.com/NVlabs/MUNIT at ``reference``, at DADR's sizes and loss weights.

    MUNIT's licence is non-commercial: the project runs the user's checkout and copies nothing
    from it. Two of its imports are gone from today's stacks and stand in here as empty modules,
    neither used by an iteration: ``torch.utils.serialization`` (Lua VGG weights; vgg_w is 0) and,
    when not installed, torchvision (data loading, image grids).
    """
    reference, device = Path(reference).resolve(), torch.device(device)
    config = reference / "configs" / "edges2handbags_folder.yaml"
    if not (reference / "trainer.py").is_file() or not config.is_file():
        raise FileNotFoundError(f"{reference}: not a MUNIT checkout (no trainer.py and configs/edges2handbags_folder.yaml); "
                                "git clone https://github.com/NVlabs/MUNIT into a folder outside this project")
    stand_ins = {"torch.utils.serialization": types.ModuleType("torch.utils.serialization")}
    stand_ins["torch.utils.serialization"].load_lua = None
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        stand_ins |= {name: types.ModuleType(name) for name in ("torchvision", "torchvision.transforms", "torchvision.utils")}
        stand_ins["torchvision"].transforms, stand_ins["torchvision"].utils = stand_ins["torchvision.transforms"], stand_ins["torchvision.utils"]
    sys.modules.update({k: v for k, v in stand_ins.items() if k not in sys.modules})
    for name in ("trainer", "networks", "utils", "data"):  # MUNIT's top-level modules: another checkout's must not be reused
        if Path(getattr(sys.modules.get(name), "__file__", None) or "/").parent != reference:
            sys.modules.pop(name, None)
    sys.path.insert(0, str(reference))
    try:
        trainer_module = importlib.import_module("trainer")
    finally:
        sys.path.remove(str(reference))
    hyperparameters = yaml.safe_load(config.read_text()) | MUNIT_OVERRIDES
    hyperparameters["gen"] = hyperparameters["gen"] | {"dim": dim}
    hyperparameters["dis"] = hyperparameters["dis"] | {"dim": dim}
    torch.manual_seed(seed)
    with _cuda_calls_stay(device):
        trainer = trainer_module.MUNIT_Trainer(hyperparameters).to(device)
    x_a, x_b = (torch.rand(batch, 1, size, size, device=device) * 2 - 1 for _ in range(2))

    def iteration() -> None:
        with _cuda_calls_stay(device):
            trainer.dis_update(x_a, x_b, hyperparameters)
            trainer.gen_update(x_a, x_b, hyperparameters)
    return iteration


def benchmark_drl(size: int = 128, dim: int = 64, batch: int = 1, iters: int = 10, warmup: int = 2, amp: str | None = None,
                  channels_last: bool | None = None, device: str | None = None, seed: int = 0, profile: bool = False,
                  reference: str | Path | None = None, compile: bool = False) -> dict:
    """Seconds per full D+G iteration (``DRLTrainer._iteration``) at the paper's architecture
    (n_down 2, n_res 4, style 8, MLP 256, 3-scale discriminators with 4 layers), 1-channel images.

    ``channels_last``: ``None`` follows drl_train.yaml (on CUDA only).
    Returns ``{"times": [...], "median": s, "peak_mem_mb": MB, "gflop": GFLOP per iteration, "channels_last": bool,
    "amp": the autocast dtype that ran}`` (float32, ``None``, for bfloat16 on a CPU without it: ``bundle.precision``)
    (convolutions and matrix products, forward and backward, counted by torch's ``FlopCounterMode``
    on one extra, untimed iteration); with ``profile``, also ``"profile"``: torch.profiler's
    table of the operators that took the most time over ``iters`` further iterations. With
    ``reference`` (a MUNIT checkout), its iteration runs at the same sizes in float32, alternating
    with ours in the same loop, and ``"reference_times"``, ``"reference_median"`` and
    ``"speedup"`` (its median over ours) are added: a ratio measured side by side. ``compile``:
    ``torch.compile`` the networks (the warm-up iterations then include compiling).
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
                         amp_dtype=amp, channels_last=channels_last, compile=compile)
    trainer.state.device = device
    reference_iteration = None if reference is None else munit_reference_iteration(reference, size, dim, batch, device, seed)
    times, reference_times = [], []
    for i in range(warmup + iters):
        trainer.state.iteration = i
        seconds = _timed(lambda: trainer._iteration(trainer, batch_data), device)
        theirs = None if reference_iteration is None else _timed(reference_iteration, device)
        if i >= warmup:
            times.append(seconds)
            if theirs is not None:
                reference_times.append(theirs)
    peak = _peak_memory_mb(device)
    with FlopCounterMode(display=False) as counter:
        trainer._iteration(trainer, batch_data)
    result = {"times": times, "median": statistics.median(times), "peak_mem_mb": peak, "gflop": counter.get_total_flops() / 1e9,
              "channels_last": channels_last, "compiled": trainer.compiled,
              "amp": None if trainer.amp_dtype is None else str(trainer.amp_dtype).removeprefix("torch.")}
    if reference_times:
        result |= {"reference_times": reference_times, "reference_median": statistics.median(reference_times),
                   "speedup": statistics.median(reference_times) / result["median"]}
    if profile:
        with torch.profiler.profile() as profiler:
            for _ in range(iters):
                trainer._iteration(trainer, batch_data)
        result["profile"] = profiler.key_averages().table(sort_by="self_device_time_total" if device.type == "cuda" else "self_cpu_time_total", row_limit=15)
    return result


def largest_drl_batch(size: int = 256, dim: int = 64, amp: str | None = "bfloat16", device: str | None = None, limit: int = 256,
                      **kwargs) -> dict:
    """The largest power-of-two batch whose stage-1 iteration fits the device's memory (up to
    ``limit``), with its seconds per iteration: ``{"batch", "median", "peak_mem_mb"}``."""
    best = None
    batch = 1
    while batch <= limit:
        try:
            result = benchmark_drl(size, dim, batch, iters=2, warmup=1, amp=amp, device=device, **kwargs)
        except torch.OutOfMemoryError:
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        best = {"batch": batch, "median": result["median"], "peak_mem_mb": result["peak_mem_mb"]}
        batch *= 2
    return best


def benchmark_stage2(size: int = 128, dim: int = 32, batch: int = 16, iters: int = 10, warmup: int = 2, amp: str | None = None,
                     device: str | None = None, seed: int = 0) -> dict:
    """Stage-2 throughput in slices per second, on train.yaml's network (its UNet and, for the
    precomputation, the DADR content path): ``train`` a UNet step (DiceCE, backward, Adam) on a
    batch, and ``content_only`` the frozen content path making content-only images of a batch
    (done once per slice before training). Returns ``{"train": slices/s, "content_only": slices/s}``."""
    torch.manual_seed(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({"image_size": size, "dim": dim, "adaptation": "dadr"})
    network = parser.get_parsed_content("network_def").to(device).train()
    loss = parser.get_parsed_content("loss")
    optimizer = torch.optim.Adam(network.unet.parameters(), lr=1e-3)
    autocast = (lambda: torch.autocast(device.type, dtype=getattr(torch, amp))) if amp else contextlib.nullcontext
    images = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    labels = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()

    def train_step() -> None:
        with autocast():
            value = loss(network.unet(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    @torch.no_grad()
    def content_only() -> None:
        with autocast():
            network.content_path.content_only(images, "ct")

    result = {}
    for name, step in (("train", train_step), ("content_only", content_only)):
        times = [_timed(step, device) for _ in range(warmup + iters)][warmup:]
        result[name] = batch / statistics.median(times)
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
