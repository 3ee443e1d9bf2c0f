"""A stand-in for torchvision where it is not installed: MONAI Label imports torchvision.utils at
module level for pathology image grids that the bundle tasks never call, and there is no CPU
build of torchvision for the pinned torch here. Put on the path only when torchvision is absent."""

from . import utils  # noqa: F401
