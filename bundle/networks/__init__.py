"""Networks of the DRLModule (paper Fig. 2), the inference network built from it (content-only image -> UNet),
the DACGAN baseline's CycleGAN and
DADR's diverse style transfer of the labelled CT to MR."""

from bundle.networks.adain import AdaINResBlock, AdaptiveInstanceNorm
from bundle.networks.cyclegan import CycleGAN, PatchDiscriminators, ResnetGenerator, load_translator
from bundle.networks.discriminator import ContentDiscriminator, DomainDiscriminators, MultiScaleDiscriminator
from bundle.networks.drl import DRLModule
from bundle.networks.encoders import ContentEncoder, StyleEncoder
from bundle.networks.generator import Generator
from bundle.networks.content_only import ContentOnly
from bundle.networks.segmenter import LiverSegmenter, join_dual_path, join_fallback, load_drl_weights, load_model, recorded_adaptation
from bundle.networks.style_transfer import DiverseStyleTransfer, load_style_transfer
from bundle.networks.trained_for import TrainedFor

__all__ = [
    "AdaINResBlock", "AdaptiveInstanceNorm", "ContentEncoder", "StyleEncoder", "Generator",
    "MultiScaleDiscriminator", "ContentDiscriminator", "DomainDiscriminators", "DRLModule",
    "ContentOnly", "LiverSegmenter", "join_dual_path", "join_fallback", "load_drl_weights", "load_model", "recorded_adaptation", "TrainedFor",
    "ResnetGenerator", "CycleGAN", "PatchDiscriminators", "load_translator", "DiverseStyleTransfer", "load_style_transfer",
]
