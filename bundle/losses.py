"""DADR losses (paper eq. 1-4): in-domain reconstruction, adversarial, latent reconstruction.

Ltotal = alpha * Lrecon + beta * Ladv + gamma * Llatent, with alpha = 25, beta = 10, gamma = 0.1,
plus, optionally (not in the paper), delta * Lcontent: encoders fool a content discriminator,
and task_weight * Ltask: a segmentation loss of content-only CT images (the task-aware content
space, ``DRLModule``'s ``task_segmenter``), MONAI's ``DiceCELoss``.
The adversarial term reuses MONAI's ``PatchAdversarialLoss`` (mean over the discriminator's
scales): least squares without MONAI's extra activation by default, or the paper's log form
(binary cross-entropy on sigmoid scores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, PatchAdversarialLoss
from torch import nn

__all__ = ["recon_loss", "latent_loss", "AdversarialLoss", "ContentAdversarialLoss", "DRLLoss", "CycleGANLoss", "IgnoringDiceCELoss"]


def recon_loss(reconstruction: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """eq. 2: ||G_i(Ec_i(x_i), Es_i(x_i)) - x_i||_1."""
    return F.l1_loss(reconstruction, image)


def latent_loss(content_rec: torch.Tensor, content: torch.Tensor, style_rec: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """eq. 4 for one direction: ||Ec_j(x_i->j) - c_i||_1 + ||Es_j(x_i->j) - s_j||_1."""
    return F.l1_loss(content_rec, content) + F.l1_loss(style_rec, style)


class AdversarialLoss(nn.Module):
    """eq. 3 on multi-scale discriminator outputs.

    Args:
        mode: ``lsgan`` (least squares, default) or ``log`` (the paper's log form).
    """

    def __init__(self, mode: str = "lsgan") -> None:
        super().__init__()
        criteria = {"lsgan": "least_squares", "log": "bce"}
        if mode not in criteria:
            raise ValueError(f"adversarial mode must be one of {sorted(criteria)}, got {mode!r}")
        self.loss = PatchAdversarialLoss(criterion=criteria[mode], no_activation_leastsq=True)

    def _score(self, scores: list[torch.Tensor], target_is_real: bool, for_discriminator: bool) -> torch.Tensor:
        """MONAI's criterion in float32 outside autocast: CUDA autocast refuses BCE outright
        (casting the inputs is not enough there; CPU autocast lets it pass); scores are tiny anyway."""
        with torch.autocast(scores[0].device.type, enabled=False):
            return self.loss([s.float() for s in scores], target_is_real, for_discriminator)

    def discriminator(self, real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
        """D's side: real scores towards real, fake scores towards fake."""
        return self._score(real, True, True) + self._score(fake, False, True)

    def discriminator_on_batch(self, scores: list[torch.Tensor], n_real: int) -> torch.Tensor:
        """D's side on one pass over ``cat([real, fake])``: the first ``n_real`` samples of every
        scale's scores are the real images'."""
        return self.discriminator([s[:n_real] for s in scores], [s[n_real:] for s in scores])

    def generator(self, fake: list[torch.Tensor]) -> torch.Tensor:
        """G's side: fake scores towards real."""
        return self._score(fake, True, False)


class ContentAdversarialLoss(nn.Module):
    """Least-squares content-domain game (DRIT): the discriminator scores CT content 1 and MR
    content 0; the encoders want every code scored 0.5, i.e. the modality unreadable."""

    def discriminator(self, scores: torch.Tensor, n_ct: int) -> torch.Tensor:
        target = torch.cat([torch.ones_like(scores[:n_ct]), torch.zeros_like(scores[n_ct:])])
        return F.mse_loss(scores.float(), target.float())

    def encoder(self, scores: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(scores.float(), torch.full_like(scores.float(), 0.5))


class DRLLoss(nn.Module):
    """eq. 1: the weighted generator objective of one iteration, from ``DRLModule.forward``'s outputs.

    Args:
        alpha: weight of the in-domain reconstruction (25).
        beta: weight of the adversarial term (10).
        gamma: weight of the latent reconstruction (0.1).
        delta: weight of the content adversarial term (0: the paper's objective).
        task_weight: weight of the task term, played when the DRLModule has a ``task_segmenter``
            (and of its MR part ``task_mr``, when the MR slices come with pseudo-labels).
        task_loss: the task term (default: Dice + cross-entropy over the batch, softmax logits,
            class-id labels).
    """

    def __init__(self, alpha: float = 25.0, beta: float = 10.0, gamma: float = 0.1, delta: float = 0.0,
                 task_weight: float = 0.0, task_loss: nn.Module | None = None) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma, self.delta, self.task_weight = alpha, beta, gamma, delta, task_weight
        self.task_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True) if task_loss is None else task_loss

    def forward(self, out: dict[str, torch.Tensor], x_ct: torch.Tensor, x_mr: torch.Tensor,
                style_ct: torch.Tensor, style_mr: torch.Tensor, adversarial: torch.Tensor,
                content_adversarial: torch.Tensor | None = None, label_ct: torch.Tensor | None = None,
                label_mr: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Returns every term and ``total``; ``style_*`` are the random styles used to translate;
        ``label_ct``: the CT slices' labels, needed when ``out`` has ``task_logits``; ``label_mr``:
        the MR slices' pseudo-labels, needed when it has ``task_logits_mr`` (negative on the
        slices of MR without one: the term leaves those out, and is 0 when no slice has one)."""
        terms = {
            "recon_ct": recon_loss(out["recon_ct"], x_ct),
            "recon_mr": recon_loss(out["recon_mr"], x_mr),
            "latent_ct2mr": latent_loss(out["content_ct2mr"], out["content_ct"], out["style_ct2mr"], style_mr),
            "latent_mr2ct": latent_loss(out["content_mr2ct"], out["content_mr"], out["style_mr2ct"], style_ct),
            "adv_g": adversarial,
        }
        terms["total"] = (self.alpha * (terms["recon_ct"] + terms["recon_mr"]) + self.beta * adversarial
                          + self.gamma * (terms["latent_ct2mr"] + terms["latent_mr2ct"]))
        if content_adversarial is not None:
            terms["adv_content"] = content_adversarial
            terms["total"] = terms["total"] + self.delta * content_adversarial
        if "task_logits" in out:
            if label_ct is None:
                raise ValueError("the DRLModule has a task segmenter but the CT slices have no labels: "
                                 "give the training slices their labels (UnpairedSlices source_label)")
            terms["task"] = self.task_loss(out["task_logits"].float(), torch.cat([label_ct, label_ct]))
            terms["total"] = terms["total"] + self.task_weight * terms["task"]
        if "task_logits_mr" in out:
            if label_mr is None:
                raise ValueError("the DRLModule segments the MR slices but they have no pseudo-labels (UnpairedSlices target_label)")
            labelled = (label_mr >= 0).flatten(1).all(1)  # not the slices of MR without pseudo-labels (NO_LABEL)
            logits = out["task_logits_mr"].float()
            terms["task_mr"] = self.task_loss(logits[labelled], label_mr[labelled]) if labelled.any() else logits.sum() * 0.0
            terms["total"] = terms["total"] + self.task_weight * terms["task_mr"]
        return terms


class CycleGANLoss(nn.Module):
    """The DACGAN baseline's generator objective (CycleGAN): Ladv + lambda * (||F(G(x_ct)) - x_ct||_1
    + ||G(F(x_mr)) - x_mr||_1), from ``CycleGAN.forward``'s outputs.

    Args:
        cycle_weight: lambda, the weight of the cycle-consistency terms (CycleGAN: 10).
    """

    def __init__(self, cycle_weight: float = 10.0) -> None:
        super().__init__()
        self.cycle_weight = cycle_weight

    def forward(self, out: dict[str, torch.Tensor], x_ct: torch.Tensor, x_mr: torch.Tensor, adversarial: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"cycle_ct": recon_loss(out["cycle_ct"], x_ct), "cycle_mr": recon_loss(out["cycle_mr"], x_mr), "adv_g": adversarial}
        terms["total"] = adversarial + self.cycle_weight * (terms["cycle_ct"] + terms["cycle_mr"])
        return terms


class IgnoringDiceCELoss(nn.Module):
    """Dice + cross-entropy, both blind to the voxels labelled ``ignore_index``: a pseudo-label's
    untrusted voxels (cohort adaptation, ``bundle.adapt``) are left out of the loss, not called
    background. MONAI's ``DiceCELoss`` has no ignore label; its ``DiceLoss`` and torch's
    cross-entropy each have one, so this is their sum (Dice over the batch, as stage 2's loss)."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, batch=True, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target[:, 0].long(), ignore_index=self.ignore_index)
        return self.dice(logits, target) + ce
