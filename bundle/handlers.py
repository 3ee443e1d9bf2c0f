"""Ignite handlers around the GAN loops (stage 1, CycleGAN): validation signals, image grids, a progress bar.

Checkpoints are in ``bundle.checkpoint``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from bundle.atomic import atomic_outputs
from bundle.data.slices import evenly_spaced
from bundle.engines.adversarial import unwrap
from bundle.metrics import content_domain_accuracy

__all__ = ["DRLValidation", "CycleGANValidation", "LossProgressBar", "radiological"]

logger = logging.getLogger(__name__)


def radiological(slices: torch.Tensor) -> torch.Tensor:
    """RAS-indexed (..., x, y) slices as displayed by radiologists: anterior up, patient's right on the left."""
    return slices.transpose(-1, -2).flip(-1, -2)


class LossProgressBar(ProgressBar):
    """ignite's progress bar showing the generator (G) and discriminator (D) losses, attachable by MONAI.

    Only on a terminal: written to a log file or a CI console, a bar redrawn at every iteration
    makes megabytes of text; there the validation's one line per interval is the progress.
    """

    def attach(self, engine: Engine) -> None:  # type: ignore[override]
        if sys.stderr.isatty():
            super().attach(engine, output_transform=lambda out: {"G": out["losses"]["total"], "D": out["losses"]["adv_d"]})


class DRLValidation:
    """Every ``interval`` epochs: measurable signals that the disentangling works.

    - ``recon_l1_ct`` / ``recon_l1_mr``: in-domain reconstruction error on fixed slices;
    - ``content_domain_acc``: how well a logistic regression tells CT from MR content codes,
      cross-validated over held-out subjects (near 0.5 = a shared content space);
    - an image grid (rows: CT, content-only CT, CT->MR with a random style, MR, content-only
      MR, MR->CT) written to TensorBoard and as PNG under ``output_dir/images``.

    Results go to ``engine.state.metrics``, the log, and ``output_dir/validation.jsonl``.

    Args:
        network: the DRLModule (optionally DDP-wrapped).
        source: CT slices ``{"image": (N, 1, S, S), "subject": (N,)}`` (``load_slices`` output).
        target: MR slices, the same way.
        output_dir: where ``validation.jsonl`` and ``images/`` go.
        n_slices: fixed validation slices per domain, spread evenly over each set.
        interval: epochs between validations.
        log_dir: TensorBoard folder (``None``: no TensorBoard).
        n_images: columns of the image grid.
        batch_size: validation batch size.
    """

    prefix = "drl"
    rows = ("ct", "content_only_ct", "ct2mr", "mr", "content_only_mr", "mr2ct")

    def __init__(self, network: torch.nn.Module, source: dict, target: dict, output_dir: str, n_slices: int = 64,
                 interval: int = 1, log_dir: str | None = None, n_images: int = 4, batch_size: int = 16) -> None:
        self.network = network
        self.source, self.source_subjects = evenly_spaced(source["image"], n_slices), evenly_spaced(source["subject"], n_slices)
        self.target, self.target_subjects = evenly_spaced(target["image"], n_slices), evenly_spaced(target["subject"], n_slices)
        self.output_dir = Path(output_dir)
        self.interval, self.n_images, self.batch_size = interval, n_images, batch_size
        self.log_dir = log_dir
        self.writer = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def _run(self, images: torch.Tensor, domain: str, device: torch.device) -> tuple[float, torch.Tensor]:
        drl = unwrap(self.network)
        errors, codes = [], []
        for batch in images.split(self.batch_size):
            batch = batch.to(device)
            content, style = drl.encode(batch, domain)
            errors.append((drl.decode(content, style, domain) - batch).abs().mean(dim=(1, 2, 3)).cpu())
            codes.append(content.float().cpu())
        return float(torch.cat(errors).mean()), torch.cat(codes)

    @torch.no_grad()
    def grid(self, device: torch.device, seed: int = 0) -> torch.Tensor:
        """(6, n, 1, S, S): CT, content-only CT, CT->MR, MR, content-only MR, MR->CT."""
        drl = unwrap(self.network)
        ct, mr = evenly_spaced(self.source, self.n_images).to(device), evenly_spaced(self.target, self.n_images).to(device)
        gen = torch.Generator(device=device).manual_seed(seed)
        rows = [ct, drl.content_only(ct, "ct"), drl.translate(ct, "ct", "mr", drl.random_style(len(ct), ct, gen)),
                mr, drl.content_only(mr, "mr"), drl.translate(mr, "mr", "ct", drl.random_style(len(mr), mr, gen))]
        n = min(len(ct), len(mr))
        return torch.stack([r[:n].float().cpu() for r in rows])

    def metrics(self, device: torch.device) -> dict[str, float]:
        recon_ct, codes_ct = self._run(self.source, "ct", device)
        recon_mr, codes_mr = self._run(self.target, "mr", device)
        accuracy = content_domain_accuracy(codes_ct, codes_mr, self.source_subjects, self.target_subjects)
        return {"recon_l1_ct": recon_ct, "recon_l1_mr": recon_mr, "content_domain_acc": accuracy}

    def compute(self, device: torch.device) -> tuple[dict[str, float], torch.Tensor]:
        """The validation metrics and image grid of the network as it is now."""
        network = unwrap(self.network)
        was_training = network.training
        network.eval()
        try:
            return self.metrics(device), self.grid(device)
        finally:
            network.train(was_training)

    def __call__(self, engine: Engine) -> None:
        metrics, grid = self.compute(torch.device(engine.state.device))
        iteration = engine.state.iteration
        engine.state.metrics.update(metrics)
        logger.info("validation at iteration %d: %s", iteration, {k: round(v, 4) for k, v in metrics.items()})
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "validation.jsonl", "a") as f:
            f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        self._write_images(grid, iteration)
        if self.log_dir is not None:
            self._write_tensorboard(metrics, grid, iteration)

    def _write_images(self, grid: torch.Tensor, iteration: int) -> None:
        from PIL import Image

        rows, n, _, size, _ = grid.shape
        tiles = radiological(grid[:, :, 0])
        mosaic = ((tiles.permute(0, 2, 1, 3).reshape(rows * size, n * size).clamp(-1, 1) + 1) * 127.5).numpy()
        folder = self.output_dir / "images"
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_outputs([folder / f"{self.prefix}_{iteration:07d}.png"]) as (tmp,):
            Image.fromarray(mosaic.astype(np.uint8)).save(tmp, format="PNG")

    def _write_tensorboard(self, metrics: dict, grid: torch.Tensor, iteration: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            self.writer = SummaryWriter(self.log_dir)
        for name, value in metrics.items():
            self.writer.add_scalar(f"val/{name}", value, iteration)
        for name, row in zip(self.rows, grid):
            self.writer.add_images(f"images/{name}", (radiological(row).clamp(-1, 1) + 1) / 2, iteration)
        self.writer.flush()


class CycleGANValidation(DRLValidation):
    """``DRLValidation`` for the DACGAN baseline's CycleGAN: cycle reconstruction errors
    ``cycle_l1_ct`` / ``cycle_l1_mr`` and a grid of CT, CT->MR, CT->MR->CT, MR, MR->CT, MR->CT->MR.
    Arguments as ``DRLValidation``."""

    prefix = "cyclegan"
    rows = ("ct", "ct2mr", "cycle_ct", "mr", "mr2ct", "cycle_mr")

    @torch.no_grad()
    def _cycle_error(self, images: torch.Tensor, domain: str, device: torch.device) -> float:
        gan = unwrap(self.network)
        errors = [(gan.reconstruct(b.to(device), domain) - b.to(device)).abs().mean(dim=(1, 2, 3)).cpu() for b in images.split(self.batch_size)]
        return float(torch.cat(errors).mean())

    def metrics(self, device: torch.device) -> dict[str, float]:
        return {"cycle_l1_ct": self._cycle_error(self.source, "ct", device), "cycle_l1_mr": self._cycle_error(self.target, "mr", device)}

    @torch.no_grad()
    def grid(self, device: torch.device, seed: int = 0) -> torch.Tensor:
        gan = unwrap(self.network)
        ct, mr = evenly_spaced(self.source, self.n_images).to(device), evenly_spaced(self.target, self.n_images).to(device)
        ct2mr, mr2ct = gan.translate(ct, "ct", "mr"), gan.translate(mr, "mr", "ct")
        rows = [ct, ct2mr, gan.translate(ct2mr, "mr", "ct"), mr, mr2ct, gan.translate(mr2ct, "ct", "mr")]
        n = min(len(ct), len(mr))
        return torch.stack([r[:n].float().cpu() for r in rows])
