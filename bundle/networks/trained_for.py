"""What a network's weights were trained for, kept in the weights themselves.

The networks are fully convolutional: weights trained on 128-px slices load into a 64-px
configuration, and weights trained with one CT window into a configuration with another,
without any error, and then segment badly (Dice 0.10 instead of 0.5). Shapes that do not fit
fail on their own; these settings are recorded as a buffer and compared when weights load.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["TrainedFor"]

FIELDS = ("image_size", "ct_window_low", "ct_window_high", "mr_percentile_low", "mr_percentile_high")


class TrainedFor(nn.Module):
    """A buffer ``values`` (image size, CT window, MR percentiles) saved with the weights; loading
    weights recorded for other values is an error that names both. Weights saved before these were
    recorded (no such key) load as they are: there is nothing to compare them with.

    Args:
        image_size: square slice size of the networks.
        ct_window: HU mapped to [-1, 1].
        mr_percentiles: MR intensity percentiles mapped to [-1, 1].
    """

    def __init__(self, image_size: int, ct_window: Sequence[float], mr_percentiles: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("values", torch.tensor([image_size, *ct_window, *mr_percentiles], dtype=torch.float32))

    @staticmethod
    def describe(values: torch.Tensor) -> str:
        v = [float(x) for x in values]
        return f"image_size {v[0]:g}, ct_window [{v[1]:g}, {v[2]:g}], mr_percentiles [{v[3]:g}, {v[4]:g}]"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
        key = prefix + "values"
        if key not in state_dict:
            state_dict[key] = self.values.clone()
        elif not torch.allclose(state_dict[key].double().cpu(), self.values.double().cpu()):
            error_msgs.append(f"the weights were trained for {self.describe(state_dict[key])}, but this configuration has "
                              f"{self.describe(self.values)}: pass the same values as the training")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
