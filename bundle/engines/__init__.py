"""Ignite engines of the GAN stages: the DRLModule (DADR) and the CycleGAN (DACGAN baseline)."""

from bundle.engines.cyclegan_trainer import CycleGANTrainer
from bundle.engines.drl_trainer import AdversarialTrainer, DRLTrainer, unwrap

__all__ = ["AdversarialTrainer", "DRLTrainer", "CycleGANTrainer", "unwrap"]
