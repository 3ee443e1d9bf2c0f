"""Mixed precision: the autocast dtype to use for an ``--amp`` request on a device.

bfloat16 autocast trains and segments as well as float32 and is 1.4-2x faster on CPUs with
bfloat16 arithmetic (oneDNN's AVX-512 or AMX kernels). On a CPU without them (AVX2 only, e.g.
AMD Zen 3) PyTorch still accepts it but runs reference kernels: on a 2-core AMD EPYC (Zen 3)
a 2048 x 2048 matrix product took 53 s in bfloat16 against 0.2 s in float32, and a stage-1
iteration 55.7 s against 1.3 s (``scripts/benchmark.py matmul --dtype bfloat16``, ``drl
--amp bfloat16``). A training that would take weeks there runs in float32 instead, with a
warning, so the same command works on every machine.
"""

from __future__ import annotations

import functools
import logging

import torch

__all__ = ["AMP_DTYPES", "autocast_dtype", "cpu_has_bfloat16", "precision_that_runs"]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.cache
def cpu_has_bfloat16() -> bool:
    """Whether this CPU has the bfloat16 kernels of oneDNN (AVX-512 or AMX). ``torch.ops.mkldnn``'s
    check is private but is the one PyTorch's own bfloat16 CPU tests use; without oneDNN, no."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(amp: str | None, device: str | torch.device) -> torch.dtype | None:
    """The dtype to autocast to on ``device`` for ``amp`` (``None``, ``"bfloat16"`` or ``"float16"``):
    ``None`` (float32) where ``amp`` is ``None``, or bfloat16 is asked on a CPU without bfloat16
    arithmetic (logged once per process)."""
    if amp is None:
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None or one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if amp == "bfloat16" and torch.device(device).type == "cpu" and not cpu_has_bfloat16():
        _warn_float32()
        return None
    return AMP_DTYPES[amp]


def precision_that_runs(amp: str | None) -> str:
    """The name of the precision an ``--amp`` request runs in on this machine's device (CUDA where
    there is one): what a run records beside what it was asked."""
    dtype = autocast_dtype(amp, "cuda" if torch.cuda.is_available() else "cpu")
    return str(dtype or torch.float32).removeprefix("torch.")


@functools.cache
def _warn_float32() -> None:
    logger.warning("--amp bfloat16: this CPU has no bfloat16 arithmetic (AVX-512 or AMX), where bfloat16 runs about 40x "
                   "slower than float32; running in float32")
