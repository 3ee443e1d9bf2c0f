"""Benchmarks that print figures (never timed tests).

    python scripts/benchmark.py drl --size 128 --dim 64 --batch 1 --iters 10 [--amp bfloat16] [--channels_last True] [--profile True]
        [--reference MUNIT_CHECKOUT]   # the MUNIT reference iteration alternating with ours: both medians and the ratio

    python scripts/benchmark.py max_batch --size 256 --dim 64 [--amp bfloat16] [--limit 256]   # the largest stage-1 batch that fits

    python scripts/benchmark.py seg --size 128 --dim 32 --batch 16 [--amp bfloat16]   # stage 2: slices/s, training and content-only

    python scripts/benchmark.py inference --shape 256,256,40 --iters 5 [--image_size 128 --dim 32]

    python scripts/benchmark.py matmul --n 2048 [--dtype bfloat16]

The last line is ``drl s/iter=<median seconds per D+G iteration> peak_mem=<MB> gflop=<per iteration>
gflops=<achieved>`` (with ``--reference``, then ``reference s/iter=<median> speedup=<reference / ours>x``), ``inference s/volume=<median seconds per volume, read to written> peak_mem=<MB>``,
or ``matmul gflops=<the machine's rate>``.
"""


import torch

from bundle.benchmark import (
    benchmark_drl,
    benchmark_inference,
    benchmark_matmul,
    benchmark_stage2,
    largest_drl_batch,
)
from bundle.cli import flag, optional, run_cli


class Benchmark:
    """Speed benchmarks of the bundle's hot paths."""

    def drl(self, size: int = 128, dim: int = 64, batch: int = 1, iters: int = 10, warmup: int = 2, amp: str | None = None,
            channels_last: bool | None = None, device: str | None = None, profile: bool = False, reference: str | None = None,
            compile: bool = False) -> None:
        """Stage-1 training iteration (discriminator + generator update); ``--profile True`` first prints where the time goes;
        ``--reference DIR`` times the MUNIT reference of a checkout in DIR alternately with ours."""
        channels_last = None if channels_last is None else flag(channels_last, "channels_last")
        result = benchmark_drl(size, dim, batch, iters, warmup, optional(amp), channels_last, device, profile=flag(profile, "profile"),
                               reference=reference, compile=flag(compile, "compile"))
        if "profile" in result:
            print(result["profile"])
        print(f"size={size} dim={dim} batch={batch} amp={result['amp'] or 'float32'} channels_last={result['channels_last']} compiled={result['compiled']} "
              f"threads={torch.get_num_threads()} "
              f"times=[{', '.join(f'{t:.3f}' for t in result['times'])}]")
        if "reference_times" in result:
            print(f"reference times=[{', '.join(f'{t:.3f}' for t in result['reference_times'])}]")
        reference = f" reference s/iter={result['reference_median']:.3f} speedup={result['speedup']:.2f}x" if "speedup" in result else ""
        print(f"drl s/iter={result['median']:.3f} peak_mem={result['peak_mem_mb']:.0f}MB gflop={result['gflop']:.1f} "
              f"gflops={result['gflop'] / result['median']:.0f}{reference}")

    def max_batch(self, size: int = 256, dim: int = 64, amp: str | None = "bfloat16", device: str | None = None, limit: int = 256,
                  channels_last: bool | None = None) -> None:
        """The largest power-of-two stage-1 batch that fits the device (up to ``limit``)."""
        channels_last = None if channels_last is None else flag(channels_last, "channels_last")
        best = largest_drl_batch(size, dim, optional(amp), device, int(limit), channels_last=channels_last)
        if best is None:
            print(f"max_batch=0: batch 1 at {size} px / dim {dim} does not fit")
            return
        print(f"max_batch={best['batch']} s/iter={best['median']:.3f} peak_mem={best['peak_mem_mb']:.0f}MB "
              f"images/s={best['batch'] / best['median']:.1f} (size={size} dim={dim} amp={amp} limit={limit})")

    def seg(self, size: int = 128, dim: int = 32, batch: int = 16, iters: int = 10, warmup: int = 2, amp: str | None = None,
            device: str | None = None) -> None:
        """Stage 2: slices/s of the UNet training step and of the content-only precomputation (train.yaml's network)."""
        result = benchmark_stage2(size, dim, batch, iters, warmup, optional(amp), device)
        print(f"seg size={size} dim={dim} batch={batch} amp={amp} threads={torch.get_num_threads()} "
              f"train slices/s={result['train']:.1f} content_only slices/s={result['content_only']:.1f}")

    def inference(self, shape: str | tuple = "256,256,40", iters: int = 5, warmup: int = 1, device: str | None = None, **sizes) -> None:
        """Inference on one volume, end to end, through configs/inference.yaml (sizes overridable)."""
        shape = tuple(int(v) for v in (shape.split(",") if isinstance(shape, str) else shape))
        result = benchmark_inference(shape, iters, warmup, device, **sizes)
        print(f"shape={shape} threads={torch.get_num_threads()} sizes={sizes or 'inference.yaml'} "
              f"times=[{', '.join(f'{t:.3f}' for t in result['times'])}]")
        print(f"inference s/volume={result['median']:.3f} peak_mem={result['peak_mem_mb']:.0f}MB")

    def matmul(self, n: int = 2048, iters: int = 10, dtype: str = "float32", device: str | None = None) -> None:
        """The arithmetic ceiling: one large matrix product."""
        result = benchmark_matmul(n, iters, dtype, device)
        print(f"n={n} dtype={dtype} threads={torch.get_num_threads()} times=[{', '.join(f'{t:.4f}' for t in result['times'])}]")
        print(f"matmul gflops={result['gflops']:.0f}")


if __name__ == "__main__":
    run_cli(Benchmark)
