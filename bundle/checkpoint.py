"""Checkpoints of every training (stage 1, CycleGAN, stage 2): atomic, pruned, resumed.

MONAI's ``CheckpointSaver`` writes non-atomically (``atomic=False``), so a run killed while
saving could leave a truncated "latest" checkpoint that the next run resumes from; here ignite's
``Checkpoint`` writes through an atomic ``DiskSaver``. ignite counts only the files of its own
process against ``n_saved``, so the folder is pruned here, across restarts; and a checkpoint
that cannot be read (a disk filled up, a file damaged later) is skipped for the one before it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from bundle.atomic import atomic_outputs
from bundle.engines.adversarial import unwrap
from bundle.errors import DataError

__all__ = ["AtomicCheckpoint", "BestModel", "checkpoints", "training_seconds"]

logger = logging.getLogger(__name__)


def checkpoints(ckpt_dir: str | Path, prefix: str = "drl") -> list[Path]:
    """The checkpoints ``<prefix>_checkpoint_<iteration>.pt`` in ``ckpt_dir``, oldest first."""
    found = []
    for path in Path(ckpt_dir).glob(f"{prefix}_checkpoint_*.pt"):
        if match := re.fullmatch(rf"{re.escape(prefix)}_checkpoint_(\d+)\.pt", path.name):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def training_seconds(final_path: str | Path) -> dict:
    """What the training that wrote ``final_path`` recorded beside it (``<final_path>.json``):
    its wall time over every run that resumed it, and the part of it spent before this run's
    resume; ``{}`` for weights written without it."""
    try:
        record = json.loads(Path(f"{final_path}.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class _WallClock:
    """Training wall time, saved in every checkpoint, so that a resumed run counts the time of
    the runs before it up to the checkpoint it resumed from (the work after that checkpoint is
    done again and counted once)."""

    def __init__(self) -> None:
        self.before, self.started = 0.0, time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.before, self.started = float(state["seconds"]), time.perf_counter()


class AtomicCheckpoint:
    """Resume from the last readable checkpoint in ``save_dir`` at start; save every
    ``save_interval`` epochs, atomically, keeping the last ``n_saved`` (old runs' files
    included); at the end write the network's weights alone to ``final_path``, atomically, and
    the training's wall time over every run that resumed it to ``<final_path>.json``.

    The trainer's own state (epoch, iteration) is saved with the ``objects`` under the key
    ``trainer``, so a resumed run continues where the last one stopped. An epoch's checkpoint
    is written after its other end-of-epoch handlers (validation), so a run killed while
    validating redoes that epoch, validation included. Under torch.distributed every rank
    resumes and only rank 0 writes (ignite's ``DiskSaver`` is rank-aware; it must be built on
    every rank because it synchronises when created).

    Args:
        save_dir: checkpoint folder.
        objects: name -> object with ``state_dict`` (networks, optimisers, schedulers).
        n_saved: checkpoints kept.
        save_interval: epochs between checkpoints.
        resume: load the latest checkpoint (if any) when the run starts.
        network: the network whose weights ``final_path`` receives.
        final_path: where to write the trained network's ``state_dict`` (``None``: not written).
        map_location: device mapping for loading.
        prefix: file-name prefix of the checkpoints (``drl``, ``seg``...).
        remove_when_done: delete the checkpoints once ``final_path`` is written, so that a
            finished run leaves its weights and the next run in the folder starts afresh
            (stage 2, which MONAI Label retrains in place) instead of resuming a finished run.
    """

    def __init__(self, save_dir: str, objects: dict, n_saved: int = 3, save_interval: int = 1, resume: bool = True,
                 network: torch.nn.Module | None = None, final_path: str | None = None, map_location=None, prefix: str = "drl",
                 remove_when_done: bool = False) -> None:
        self.save_dir, self.objects, self.n_saved, self.save_interval = save_dir, dict(objects), n_saved, save_interval
        self.resume, self.network, self.final_path, self.map_location, self.prefix = resume, network, final_path, map_location, prefix
        self.remove_when_done = remove_when_done
        self._save_registered = False
        self.clock = _WallClock()

    def attach(self, engine: Engine) -> None:
        self.objects["trainer"], self.objects["wall_clock"] = engine, self.clock
        engine.add_event_handler(Events.STARTED, lambda _: self.clock.load_state_dict({"seconds": 0.0}))
        if self.resume:
            engine.add_event_handler(Events.STARTED, self._resume)
        Path(self.save_dir).mkdir(parents=True, exist_ok=True)
        self.checkpoint = Checkpoint(
            self.objects, DiskSaver(self.save_dir, atomic=True, require_empty=False), filename_prefix=self.prefix,
            n_saved=self.n_saved, global_step_transform=lambda e, _: e.state.iteration,
        )
        # ignite runs an event's handlers in the order they were added: adding the save when the
        # run starts puts it after every handler attached with the config (validation)
        engine.add_event_handler(Events.STARTED, self._register_save)
        if self.final_path is not None and self.network is not None and idist.get_rank() == 0:
            engine.add_event_handler(Events.COMPLETED, self._save_final)

    def _register_save(self, engine: Engine) -> None:
        if not self._save_registered:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._save)
            self._save_registered = True

    def _save(self, engine: Engine) -> None:
        self.checkpoint(engine)
        if idist.get_rank() == 0:
            for old in checkpoints(self.save_dir, self.prefix)[: -self.n_saved]:
                old.unlink(missing_ok=True)

    def _resume(self, engine: Engine) -> None:
        max_epochs = engine.state.max_epochs
        for path in reversed(checkpoints(self.save_dir, self.prefix)):
            try:
                state = torch.load(path, map_location=self.map_location, weights_only=True)
            except Exception as e:  # truncated, zero-filled, not a checkpoint: try the one before
                logger.warning("%s: cannot be read (%s); resuming from the checkpoint before it", path, " ".join(str(e).split())[:200])
                continue
            # checkpoints written before the wall clock was saved resume with the time of this run alone
            objects = self.objects if "wall_clock" in state else {k: v for k, v in self.objects.items() if k != "wall_clock"}
            try:
                Checkpoint.load_objects(objects, state)
            except (RuntimeError, KeyError, ValueError) as e:
                raise DataError(path, f"does not fit this run (other network sizes or options?): {' '.join(str(e).split())[:300]}") from e
            if engine.state.epoch > max_epochs:
                raise DataError(path, f"checkpoint is at epoch {engine.state.epoch}, beyond this run's {max_epochs} epochs; "
                                      "raise the run's length or use another folder")
            engine.state.max_epochs = max_epochs
            logger.info("resumed from %s (iteration %d)", path, engine.state.iteration)
            return

    def _save_final(self, engine: Engine) -> None:
        final = Path(self.final_path)
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_outputs([final, final.with_name(final.name + ".json")]) as (tmp, record):
            torch.save(unwrap(self.network).state_dict(), tmp)
            record.write_text(json.dumps({"train_seconds": round(self.clock.seconds(), 1), "before_this_run": round(self.clock.before, 1),
                                          "iterations": engine.state.iteration}))
        logger.info("%s weights written to %s after %d iterations", type(unwrap(self.network)).__name__, final, engine.state.iteration)
        if self.remove_when_done:
            for path in checkpoints(self.save_dir, self.prefix):
                path.unlink(missing_ok=True)


class BestModel:
    """The network's weights at its best validation so far, atomically in ``path``, with the
    score beside it (``<path>.json``). Its best score is part of the training checkpoints
    (``state_dict``), so a resumed run compares with the best before the restart while a new
    run starts afresh. Attach to the evaluator; higher ``key_metric`` is better.

    Args:
        network: the network to save.
        path: weights file (``model_best.pt``).
    """

    def __init__(self, network: torch.nn.Module, path: str) -> None:
        self.network, self.path = network, Path(path)
        self.best = -float("inf")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        score = float(engine.state.metrics[engine.state.key_metric_name])
        if not score > self.best:
            return
        self.best = score
        if idist.get_rank() != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_outputs([self.path, self.path.with_name(self.path.name + ".json")]) as (weights, meta):
            torch.save(unwrap(self.network).state_dict(), weights)
            meta.write_text(json.dumps({"score": score, "metric": engine.state.key_metric_name, "epoch": engine.state.epoch}))
        logger.info("best %s %.4f at epoch %d: %s", engine.state.key_metric_name, score, engine.state.epoch, self.path)
