"""CycleGANTrainer: the ignite engine of the DACGAN baseline's translator.

Same loop as the DRL stage (``bundle/engines/adversarial.py``): the generators run once per iteration,
the discriminators are updated on the detached translations, then the generators through the
updated, frozen discriminators.
"""

from __future__ import annotations

from typing import Any

import torch

from bundle.engines.adversarial import AdversarialTrainer
from bundle.losses import CycleGANLoss

__all__ = ["CycleGANTrainer"]


class CycleGANTrainer(AdversarialTrainer):
    """Trains a ``CycleGAN`` (``network``) against ``PatchDiscriminators``; ``loss`` is
    ``CycleGANLoss`` by default. Arguments as ``AdversarialTrainer``."""

    def __init__(self, *args, loss: CycleGANLoss | None = None, **kwargs) -> None:
        super().__init__(*args, loss=CycleGANLoss() if loss is None else loss, **kwargs)

    def _iteration(self, engine: CycleGANTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One CycleGAN iteration; returns ``{"losses": {term: float}}``."""
        x_ct, x_mr = engine._batch(batchdata)
        with engine._autocast():
            out = engine.network(x_ct, x_mr)

        n = x_ct.shape[0]
        with engine._autocast():
            scores_ct, scores_mr = engine.discriminators(torch.cat([x_ct, out["mr2ct"].detach()]), torch.cat([x_mr, out["ct2mr"].detach()]))
        d_loss = engine.adversarial.discriminator_on_batch(scores_ct, n) + engine.adversarial.discriminator_on_batch(scores_mr, n)
        losses = engine._checked({"adv_d": d_loss})
        engine._step("d", d_loss)

        with engine._frozen_discriminators() as discriminators:
            with engine._autocast():
                adv_g = engine.adversarial.generator(discriminators.mr(out["ct2mr"])) + engine.adversarial.generator(discriminators.ct(out["mr2ct"]))
            terms = engine.loss(out, x_ct, x_mr, adv_g)
            losses = engine._checked(terms) | losses
            engine._step("g", terms["total"])
        return {"losses": losses}
