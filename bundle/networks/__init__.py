"""Networks of the DRLModule (paper Fig. 2): content/style encoders, AdaIN generator, discriminators."""

from bundle.networks.adain import AdaINResBlock, AdaptiveInstanceNorm
from bundle.networks.discriminator import ContentDiscriminator, DomainDiscriminators, MultiScaleDiscriminator
from bundle.networks.drl import DRLModule
from bundle.networks.encoders import ContentEncoder, StyleEncoder
from bundle.networks.generator import Generator

__all__ = [
    "AdaINResBlock", "AdaptiveInstanceNorm", "ContentEncoder", "StyleEncoder", "Generator",
    "MultiScaleDiscriminator", "ContentDiscriminator", "DomainDiscriminators", "DRLModule",
]
