"""DRLTrainer: the ignite engine of stage 1, one discriminator and one generator update per iteration."""

from __future__ import annotations

from typing import Any

import ignite.distributed as idist
import torch

from bundle.engines.adversarial import AdversarialTrainer, unwrap
from bundle.losses import ContentAdversarialLoss, DRLLoss

__all__ = ["DRLTrainer"]


class DRLTrainer(AdversarialTrainer):
    """Trains the DRLModule (``network``) against ``DomainDiscriminators``; ``loss`` is
    ``DRLLoss`` (eq. 1) by default, ``content_adversarial`` the content-code game played when the
    discriminators have a content critic. Other arguments as ``AdversarialTrainer``."""

    def __init__(self, *args, loss: DRLLoss | None = None, content_adversarial: ContentAdversarialLoss | None = None, **kwargs) -> None:
        super().__init__(*args, loss=DRLLoss() if loss is None else loss, **kwargs)
        self.content_adversarial = ContentAdversarialLoss() if content_adversarial is None else content_adversarial

    def _random_styles(self, x: torch.Tensor, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        # each torchrun rank its own codes (rank 0's are those of a one-process run)
        gen = torch.Generator(device=x.device).manual_seed(self.seed * 1_000_003 + iteration + idist.get_rank() * 10**12)
        drl = unwrap(self.network)
        return drl.random_style(x.shape[0], x, gen), drl.random_style(x.shape[0], x, gen)

    def _iteration(self, engine: DRLTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One DRL iteration; returns ``{"losses": {term: float}}``."""
        x_ct, x_mr = engine._batch(batchdata)
        style_ct, style_mr = engine._random_styles(x_ct, engine.state.iteration)

        # Generator side, once: encodings, reconstructions, translations, re-encodings.
        label_mr = batchdata.get("mr_label")  # pseudo-labels of the MR slices, when stage 1 has them
        with engine._autocast():
            out = engine.network(x_ct, x_mr, style_ct, style_mr, segment_mr=label_mr is not None)

        # Discriminator update on real and detached fake images (one pass per domain).
        n = x_ct.shape[0]
        with engine._autocast():
            scores_ct, scores_mr, scores_content = engine.discriminators(
                torch.cat([x_ct, out["mr2ct"].detach()]), torch.cat([x_mr, out["ct2mr"].detach()]),
                out["content_ct"].detach(), out["content_mr"].detach(),
            )
        d_loss = engine.adversarial.discriminator_on_batch(scores_ct, n) + engine.adversarial.discriminator_on_batch(scores_mr, n)
        if scores_content is not None:
            d_loss = d_loss + engine.content_adversarial.discriminator(scores_content, n)
        losses = engine._checked({"adv_d": d_loss})
        engine._step("d", d_loss)

        # Generator update (eq. 1) through the freshly updated, frozen discriminators.
        with engine._frozen_discriminators() as discriminators:
            with engine._autocast():
                adv_g = engine.adversarial.generator(discriminators.mr(out["ct2mr"])) + engine.adversarial.generator(discriminators.ct(out["mr2ct"]))
                adv_content = None
                if discriminators.content is not None:
                    adv_content = engine.content_adversarial.encoder(discriminators.content(torch.cat([out["content_ct"], out["content_mr"]])))
            label_ct = batchdata.get("ct_label")
            label_ct = None if label_ct is None else label_ct.to(engine.state.device, non_blocking=True)
            label_mr = None if label_mr is None else label_mr.to(engine.state.device, non_blocking=True)
            terms = engine.loss(out, x_ct, x_mr, style_ct, style_mr, adv_g, adv_content, label_ct, label_mr)
            losses = engine._checked(terms) | losses
            engine._step("g", terms["total"])

        return {"losses": losses}
