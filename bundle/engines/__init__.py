"""Ignite engines of the GAN stage."""

from bundle.engines.drl_trainer import DRLTrainer, unwrap

__all__ = ["DRLTrainer", "unwrap"]
