"""Mixed precision for MONAI's engines on any device.

MONAI's ``SupervisedTrainer`` and ``SupervisedEvaluator`` autocast on CUDA only (``amp=True``);
on a CPU, bfloat16 autocast trains the UNet as well as float32 and 1.5-2x faster. The engines
call their inferer around the network, so autocast lives here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.inferers import SimpleInferer

__all__ = ["AMP_DTYPES", "AutocastInferer"]

AMP_DTYPES = {"bfloat16": torch.bfloat16}  # float16 would need gradient scaling, which an inferer cannot do


class AutocastInferer(SimpleInferer):
    """``network(inputs)`` under ``torch.autocast`` on the inputs' device; the output in float32,
    so losses and metrics are computed in full precision.

    Args:
        amp: ``bfloat16`` or ``None`` (no autocast: a plain ``SimpleInferer``).
    """

    def __init__(self, amp: str | None = None) -> None:
        super().__init__()
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got {amp!r}")
        self.dtype = AMP_DTYPES.get(amp) if amp else None

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.dtype is None:
            return network(inputs, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            out = network(inputs, *args, **kwargs)
        return out.float()
