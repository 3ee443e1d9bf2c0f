"""torchvision.utils' names MONAI Label imports; calling one says torchvision is missing."""


def make_grid(*args, **kwargs):
    raise RuntimeError("torchvision is not installed")


save_image = make_grid
