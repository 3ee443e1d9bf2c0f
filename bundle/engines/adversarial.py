"""The two-player image-GAN loop shared by stage 1 (DRLModule) and the DACGAN baseline (CycleGAN).

MONAI's ``GanTrainer`` runs the generator twice per iteration (once for D, once for G) and
has a single latent input; these GANs have two domains and share one generator forward pass
between the D and G updates, so the loop is written here; each trainer's ``_iteration`` reads
like its paper's algorithm: batch -> generator forward (once) -> D update on detached fakes ->
G update through the updated, frozen discriminators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import Trainer
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from bundle.engines.compile import compile_modules
from bundle.losses import AdversarialLoss
from bundle.precision import autocast_dtype

__all__ = ["AdversarialTrainer", "unwrap"]


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


class AdversarialTrainer(Trainer):
    """What a two-player image GAN iteration needs around it: unpaired CT and MR slice batches,
    Adam on the discriminators (D) and on the generator side (G), per-iteration random streams,
    optional autocast, a stop on non-finite losses. Subclasses write ``_iteration``.

    Args:
        device: where to train.
        max_epochs: epochs to run; an epoch is ``epoch_length`` iterations.
        train_data_loader: yields ``{"ct": (B,1,H,W), "mr": (B,1,H,W)}`` unpaired batches.
        network: the generator side (optionally DDP-wrapped).
        discriminators: both domains' discriminators as one module (optionally DDP-wrapped).
        g_optimizer: optimiser of the generator side.
        d_optimizer: optimiser of the discriminators.
        loss: the weighted generator objective.
        adversarial: the adversarial loss (least squares or log).
        epoch_length: iterations per epoch (default: the loader's length).
        seed: the random numbers of iteration ``i`` come from ``seed``, ``i`` (and the torchrun
            rank) only, so a resumed run draws the same numbers as an uninterrupted one.
        amp_dtype: ``None``, ``"bfloat16"`` or ``"float16"`` autocast (float16 uses gradient scaling; bfloat16
            falls back to float32 on a CPU without bfloat16 arithmetic, ``bundle.precision``).
        channels_last: channels-last memory format for inputs (pair with a channels-last model).
        compile: ``torch.compile`` the network and each discriminator in place (eager where it is
            unavailable; ``compiled`` says which).
        train_handlers: ignite/MONAI handlers to attach.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        network: nn.Module,
        discriminators: nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        loss: nn.Module,
        adversarial: AdversarialLoss | None = None,
        epoch_length: int | None = None,
        seed: int = 0,
        amp_dtype: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        train_handlers: Sequence | None = None,
        iteration_update: Callable | None = None,
    ) -> None:
        super().__init__(
            device=device, max_epochs=max_epochs, data_loader=train_data_loader, epoch_length=epoch_length,
            handlers=train_handlers, iteration_update=iteration_update, decollate=False,
        )
        self.network = network
        self.discriminators = discriminators
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.loss = loss
        self.adversarial = AdversarialLoss() if adversarial is None else adversarial
        self.seed = seed
        self.amp_dtype = autocast_dtype(amp_dtype, device)  # None (float32) for bfloat16 on a CPU without it
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        use_scaler = self.amp_dtype == torch.float16
        self.scalers = {k: torch.amp.GradScaler(enabled=use_scaler) for k in ("d", "g")}
        self.compiled = compile_modules(unwrap(network), *unwrap(discriminators).children()) if compile else False
        self.add_event_handler(Events.EPOCH_STARTED, self._set_data_epoch)

    def _set_data_epoch(self, engine: AdversarialTrainer) -> None:
        """Datasets with ``set_epoch`` (``UnpairedSlices``) draw each epoch's pairs from the epoch number."""
        set_epoch = getattr(self.data_loader.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(engine.state.epoch)

    def _autocast(self):
        device = torch.device(self.state.device)
        return torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()

    def _batch(self, batchdata: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        return tuple(batchdata[d].to(self.state.device, non_blocking=True, memory_format=self.memory_format) for d in ("ct", "mr"))

    def _checked(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss values as floats, read from the device at once (one sync per player's step: each
        must be checked before its step); non-finite ones stop training before a step uses them."""
        values = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(f"non-finite {type(self).__name__} loss at iteration {self.state.iteration}: {bad}; "
                                     "lower the learning rate or disable AMP")
        return values

    def _step(self, player: str, loss: torch.Tensor) -> None:
        """Backward and optimiser step of ``player`` (``"d"`` or ``"g"``)."""
        optimizer = self.d_optimizer if player == "d" else self.g_optimizer
        optimizer.zero_grad(set_to_none=True)
        self.scalers[player].scale(loss).backward()
        self.scalers[player].step(optimizer)
        self.scalers[player].update()

    @contextmanager
    def _frozen_discriminators(self):
        """The freshly updated discriminators, unwrapped from DDP and frozen, for the G update:
        a fixed function there, with no DDP gradient sync."""
        discriminators = unwrap(self.discriminators)
        for p in discriminators.parameters():
            p.requires_grad_(False)
        try:
            yield discriminators
        finally:
            for p in discriminators.parameters():
                p.requires_grad_(True)
