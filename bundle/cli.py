"""Command-line entry: ``fire`` for arguments, one clear line and exit code 2 for bad input."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
from typing import Any

import fire
import torch

from bundle.errors import DataError, unwrap_data_error

__all__ = ["run_cli", "flag", "optional", "brief_errors", "check_device", "check_choice", "refuse", "init_distributed", "end_distributed"]


def run_cli(component: Any) -> None:
    """Run ``component`` with fire; a ``DataError`` prints ``error: <file>: <problem>`` and exits 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(component)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def flag(value: bool | str, name: str) -> bool:
    """A boolean option from the command line: fire passes ``True``/``False`` as booleans but
    ``true``/``false`` as strings, and the string ``"false"`` would count as true."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"--{name} must be True or False, got {value!r}")


def optional(value: Any) -> Any:
    """An option whose default is ``null``: fire passes ``--amp null`` as the string ``"null"``."""
    return None if isinstance(value, str) and value.strip().lower() in ("null", "none") else value


def brief_errors() -> None:
    """Make ``python -m monai.bundle run`` end on bad input the way our scripts do: one line
    ``error: <file>: <problem>`` and exit code 2, the full traceback in a log file named on that
    line, instead of two chained tracebacks ending in a config expression. Other exceptions
    keep Python's report. Configs call it first in ``initialize``."""
    previous = sys.excepthook

    def hook(kind, value, tb) -> None:
        error = unwrap_data_error(value)
        if not isinstance(error, DataError):
            previous(kind, value, tb)
            return
        with tempfile.NamedTemporaryFile("w", prefix="dadr-error-", suffix=".log", delete=False) as log:
            log.write("".join(traceback.format_exception(kind, value, tb)))
        sys.stdout.flush()
        # the process's own stderr: torch.distributed's excepthook calls this one with sys.stderr
        # swapped for a buffer that it would print only after we return, and we exit here
        print(f"error: {error} (traceback: {log.name})", file=sys.__stderr__, flush=True)
        os._exit(2)  # SystemExit cannot be raised from an excepthook

    sys.excepthook = hook


def check_device(device: str | torch.device) -> torch.device:
    """``--device`` as a ``torch.device`` (a plain string like ``cpu`` or ``cuda:0`` works), refused
    clearly when it names an accelerator this machine does not have."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DataError("--device", f"{device!r} is not a device (examples: cpu, cuda, cuda:0)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device", f"{device} was asked for, but CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DataError("--device", f"{device} was asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_choice(value: Any, name: str, choices: tuple) -> Any:
    """``--name value`` must be one of ``choices``: one clear error instead of a KeyError deep in a config."""
    if value not in choices:
        raise DataError(f"--{name}", f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def refuse(condition: bool, name: str, why: str) -> None:
    """An option this run cannot honour: one clear error, rather than running without it."""
    if condition:
        raise DataError(f"--{name}", why)


def init_distributed(device: str | torch.device) -> bool:
    """Join the process group when launched by ``torchrun`` (or any launcher that sets the variables
    of ``env://``), one process included: NCCL for CUDA devices, gloo on CPUs. A plain ``python``
    run stays one process. Returns whether distributed."""
    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    if not launched or torch.distributed.is_initialized():
        return torch.distributed.is_initialized()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def per_rank_batch(batch_size: int) -> int:
    """The share of one torchrun process of a global ``--batch_size``: the ranks' batches together
    are the batch of a one-process run, so a config trains alike on any number of processes."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if int(batch_size) % world:
        raise DataError("--batch_size", f"{batch_size} is not a multiple of the {world} processes; each takes an equal share")
    return int(batch_size) // world


def end_distributed(wait: bool = True) -> None:
    """Leave the process group, if any (configs' ``finalize``), with ``wait`` once every rank is
    there: after training's last step rank 0 still validates and writes the weights, and a rank
    that tore down its gloo connections meanwhile could abort at exit (CI saw one 'terminate
    called without an active exception' on rank 1 of the two-process CycleGAN run). Inference
    does not wait: its ranks already met to gather the cases, and rank 0 alone then raises if a
    case failed, which would leave the others waiting for it."""
    if torch.distributed.is_initialized():
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
