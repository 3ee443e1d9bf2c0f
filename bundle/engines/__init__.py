"""Ignite engines of the GAN stages (the DRLModule of DADR, the CycleGAN of DACGAN), a loss check for stage 2 and a time budget."""

from bundle.engines.cyclegan_trainer import CycleGANTrainer
from bundle.engines.adversarial import AdversarialTrainer, unwrap
from bundle.engines.drl_trainer import DRLTrainer
from bundle.engines.finite_loss import FiniteLossCheck
from bundle.engines.time_limit import TrainingTimeLimit

__all__ = ["AdversarialTrainer", "DRLTrainer", "CycleGANTrainer", "FiniteLossCheck", "TrainingTimeLimit", "unwrap"]
