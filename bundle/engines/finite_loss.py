"""A stop on non-finite losses for MONAI's ``SupervisedTrainer`` (stage 2), before the step.

One NaN in the data or a diverging run gives a NaN loss; its gradients would turn every
weight into NaN at the optimiser step and the run would go on "training" and save them. MONAI
fires ``LOSS_COMPLETED`` between the loss and the backward pass, so the check sits there.
"""

from __future__ import annotations

import math

from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

__all__ = ["FiniteLossCheck"]


class FiniteLossCheck:
    """Raise ``FloatingPointError`` when a training loss is NaN or infinite, before any weight uses it."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = float(engine.state.output[CommonKeys.LOSS].detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite stage-2 loss {loss} at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                                     "the weights were not updated with it; check the training volumes and the learning rate")
