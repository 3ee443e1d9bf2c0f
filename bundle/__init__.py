"""DADR: cross-modality liver segmentation by disentangled representations, as a MONAI bundle."""

__version__ = "0.1.0"
