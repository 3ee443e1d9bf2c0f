"""``torch.compile`` of the GAN stages' networks, in place, with a clean fallback to eager.

Compiling pays on a GPU over a long run; on a small CPU it rarely does (docs/stage1.md: 4.5
minutes of compiling for 7% at 64 px on the 2-core CPU). Where compiling is unavailable (no
C++ compiler for the CPU backend, an unsupported platform or Python), the networks run eagerly
with one warning instead of failing: dynamo's ``suppress_errors`` runs a frame it cannot compile
as it is, and a ``compile`` call that fails leaves the module untouched.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["compile_modules"]

logger = logging.getLogger(__name__)


def compile_modules(*modules: nn.Module) -> bool:
    """Compile each module's forward in place (``nn.Module.compile``); returns whether all were."""
    try:
        torch._dynamo.config.suppress_errors = True
        for module in modules:
            module.compile()
    except Exception as e:  # noqa: BLE001 - any failure to compile means eager, not a failed run
        logger.warning("torch.compile is unavailable here (%s); the networks run eagerly", " ".join(str(e).split())[:200])
        return False
    return True
