"""Ignite engines of the GAN stages (the DRLModule of DADR, the CycleGAN of DACGAN) and a loss check for stage 2."""

from bundle.engines.cyclegan_trainer import CycleGANTrainer
from bundle.engines.adversarial import AdversarialTrainer, unwrap
from bundle.engines.drl_trainer import DRLTrainer
from bundle.engines.finite_loss import FiniteLossCheck

__all__ = ["AdversarialTrainer", "DRLTrainer", "CycleGANTrainer", "FiniteLossCheck", "unwrap"]
