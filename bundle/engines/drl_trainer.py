"""DRLTrainer: the ignite engine of stage 1, one discriminator and one generator update per iteration.

MONAI's ``GanTrainer`` runs the generator twice per iteration (once for D, once for G) and
has a single latent input; the DRL iteration has two domains, random style codes and shared
forward passes, so its ``_iteration`` is written here and reads like the paper's algorithm:
prepare batch -> generator forward (once) -> D update on detached fakes -> G update (eq. 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import Trainer
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from bundle.losses import AdversarialLoss, ContentAdversarialLoss, DRLLoss

__all__ = ["DRLTrainer", "unwrap"]


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


class DRLTrainer(Trainer):
    """Trains the DRLModule: unpaired CT and MR slice batches, Adam on D and on (E, G).

    Args:
        device: where to train.
        max_epochs: epochs to run; an epoch is ``epoch_length`` iterations.
        train_data_loader: yields ``{"ct": (B,1,H,W), "mr": (B,1,H,W)}`` unpaired batches.
        network: the ``DRLModule`` (optionally DDP-wrapped).
        discriminators: ``DomainDiscriminators`` (optionally DDP-wrapped).
        g_optimizer: optimiser of the encoders and generators.
        d_optimizer: optimiser of the discriminators.
        loss: the weighted generator objective (eq. 1).
        adversarial: the adversarial loss (eq. 3).
        epoch_length: iterations per epoch (default: the loader's length).
        seed: the random style codes of iteration ``i`` come from ``seed`` and ``i`` only, so a
            resumed run draws the same codes as an uninterrupted one.
        amp_dtype: ``None``, ``"bfloat16"`` or ``"float16"`` autocast (float16 uses gradient scaling).
        channels_last: channels-last memory format for inputs (pair with a channels-last model; CUDA).
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
        loss: DRLLoss | None = None,
        adversarial: AdversarialLoss | None = None,
        epoch_length: int | None = None,
        seed: int = 0,
        amp_dtype: str | None = None,
        channels_last: bool = False,
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
        self.loss = DRLLoss() if loss is None else loss
        self.adversarial = AdversarialLoss() if adversarial is None else adversarial
        self.content_adversarial = ContentAdversarialLoss()
        self.seed = seed
        if amp_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be None, 'bfloat16' or 'float16', got {amp_dtype!r}")
        self.amp_dtype = None if amp_dtype is None else getattr(torch, amp_dtype)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        use_scaler = self.amp_dtype == torch.float16
        self.scalers = {k: torch.amp.GradScaler(enabled=use_scaler) for k in ("d", "g")}
        self.add_event_handler(Events.EPOCH_STARTED, self._set_data_epoch)

    def _set_data_epoch(self, engine: DRLTrainer) -> None:
        """Datasets with ``set_epoch`` (``UnpairedSlices``) draw each epoch's pairs from the epoch number."""
        set_epoch = getattr(self.data_loader.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(engine.state.epoch)

    def _autocast(self):
        device = torch.device(self.state.device)
        return torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()

    def _random_styles(self, x: torch.Tensor, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device=x.device).manual_seed(self.seed * 1_000_003 + iteration)
        drl = unwrap(self.network)
        return drl.random_style(x.shape[0], x, gen), drl.random_style(x.shape[0], x, gen)

    @staticmethod
    def _checked(terms: dict[str, torch.Tensor], iteration: int) -> dict[str, float]:
        """Loss values as floats; non-finite ones stop training before any optimiser step uses them."""
        values = {k: float(v.detach()) for k, v in terms.items()}
        bad = {k: v for k, v in values.items() if not torch.isfinite(torch.tensor(v))}
        if bad:
            raise FloatingPointError(f"non-finite DRL loss at iteration {iteration}: {bad}; lower the learning rate or disable AMP")
        return values

    def _iteration(self, engine: DRLTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One DRL iteration; returns ``{"losses": {term: float}}``."""
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        x_ct = batchdata["ct"].to(engine.state.device, non_blocking=True, memory_format=engine.memory_format)
        x_mr = batchdata["mr"].to(engine.state.device, non_blocking=True, memory_format=engine.memory_format)
        style_ct, style_mr = engine._random_styles(x_ct, engine.state.iteration)

        # Generator side, once: encodings, reconstructions, translations, re-encodings.
        with engine._autocast():
            out = engine.network(x_ct, x_mr, style_ct, style_mr)

        # Discriminator update on real and detached fake images (one pass per domain).
        engine.d_optimizer.zero_grad(set_to_none=True)
        n = x_ct.shape[0]
        with engine._autocast():
            scores_ct, scores_mr, scores_content = engine.discriminators(
                torch.cat([x_ct, out["mr2ct"].detach()]), torch.cat([x_mr, out["ct2mr"].detach()]),
                out["content_ct"].detach(), out["content_mr"].detach(),
            )
        d_loss = engine.adversarial.discriminator([s[:n] for s in scores_ct], [s[n:] for s in scores_ct]) + \
            engine.adversarial.discriminator([s[:n] for s in scores_mr], [s[n:] for s in scores_mr])
        if scores_content is not None:
            d_loss = d_loss + engine.content_adversarial.discriminator(scores_content, n)
        losses = engine._checked({"adv_d": d_loss}, engine.state.iteration)
        engine.scalers["d"].scale(d_loss).backward()
        engine.scalers["d"].step(engine.d_optimizer)
        engine.scalers["d"].update()

        # Generator update (eq. 1) through the freshly updated, frozen discriminators.
        # The discriminators are called unwrapped: a fixed function here, no DDP gradient sync.
        discriminators = unwrap(engine.discriminators)
        for p in discriminators.parameters():
            p.requires_grad_(False)
        with engine._autocast():
            adv_g = engine.adversarial.generator(discriminators.mr(out["ct2mr"])) + engine.adversarial.generator(discriminators.ct(out["mr2ct"]))
            adv_content = None
            if discriminators.content is not None:
                adv_content = engine.content_adversarial.encoder(discriminators.content(torch.cat([out["content_ct"], out["content_mr"]])))
        terms = engine.loss(out, x_ct, x_mr, style_ct, style_mr, adv_g, adv_content)
        losses = engine._checked(terms, engine.state.iteration) | losses
        engine.g_optimizer.zero_grad(set_to_none=True)
        engine.scalers["g"].scale(terms["total"]).backward()
        engine.scalers["g"].step(engine.g_optimizer)
        engine.scalers["g"].update()
        for p in discriminators.parameters():
            p.requires_grad_(True)

        return {"losses": losses}
