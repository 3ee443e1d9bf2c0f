"""bfloat16 autocast where the CPU has it, float32 (with a warning) where it does not."""

import logging

import pytest
import torch
from torch import nn

from bundle import precision
from bundle.engines.drl_trainer import DRLTrainer
from bundle.inferers import AutocastInferer
from bundle.networks import DomainDiscriminators, DRLModule


class _RecordsPrecision(nn.Module):
    """A layer that records whether autocast was on when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.autocast = nn.Conv2d(1, 2, 3, padding=1), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast.append(torch.is_autocast_enabled(x.device.type))
        return self.conv(x)


@pytest.mark.parametrize("has_bfloat16", [True, False])
def test_bfloat16_runs_where_the_cpu_has_it_and_float32_elsewhere(monkeypatch, caplog, has_bfloat16):
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: has_bfloat16)
    precision._warn_float32.cache_clear()
    net = _RecordsPrecision()
    with caplog.at_level(logging.WARNING, logger="bundle.precision"):
        out = AutocastInferer("bfloat16")(torch.rand(1, 1, 8, 8), net)
    assert out.dtype == torch.float32 and net.autocast == [has_bfloat16]
    assert ("no bfloat16 arithmetic" in caplog.text) is not has_bfloat16
    assert precision.autocast_dtype("bfloat16", "cpu") == (torch.bfloat16 if has_bfloat16 else None)
    assert precision.autocast_dtype("bfloat16", "cuda") == torch.bfloat16  # the check is the CPU's only
    assert precision.autocast_dtype(None, "cpu") is None and precision.autocast_dtype("float16", "cpu") == torch.float16
    assert precision.precision_that_runs("bfloat16") == ("bfloat16" if has_bfloat16 or torch.cuda.is_available() else "float32")
    assert precision.precision_that_runs(None) == "float32"


def test_stage1_trainer_falls_back_to_float32_without_bfloat16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: False)
    network, discriminators = DRLModule(dim=8), DomainDiscriminators(dim=8)
    trainer = DRLTrainer("cpu", 1, [], network, discriminators, torch.optim.Adam(network.parameters()),
                         torch.optim.Adam(discriminators.parameters()), amp_dtype="bfloat16")
    assert trainer.amp_dtype is None


def test_the_probe_answers_and_unknown_precisions_are_refused():
    assert isinstance(precision.cpu_has_bfloat16(), bool)
    with pytest.raises(ValueError, match="amp must be None or one of"):
        precision.autocast_dtype("float64", "cpu")
