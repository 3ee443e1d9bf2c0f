"""Measurable signals of disentanglement for stage-1 validation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["content_domain_accuracy"]


def _features(content: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and std of a content code: (N, C, h, w) -> (N, 2C)."""
    return torch.cat([content.mean(dim=(2, 3)), content.std(dim=(2, 3))], dim=1)


def content_domain_accuracy(content_ct: torch.Tensor, content_mr: torch.Tensor, folds: int = 2, l2: float = 1e-2, seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic-regression classifier telling CT from MR content codes.

    Near 0.5 (chance, classes balanced) means the content space is shared across modalities,
    the paper's p(c1) = p(c2); near 1.0 means the codes still carry the modality.
    """
    n = min(len(content_ct), len(content_mr))
    if n < folds:
        raise ValueError(f"need at least {folds} content codes per domain, got {n}")
    x = torch.cat([_features(content_ct[:n]), _features(content_mr[:n])]).double()
    y = torch.cat([torch.zeros(n), torch.ones(n)]).double()
    order = torch.randperm(2 * n, generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    correct = 0
    for fold in range(folds):
        test = torch.arange(2 * n) % folds == fold
        mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
        xtr, xte = (x[~test] - mean) / std, (x[test] - mean) / std
        w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(xtr @ w[:-1] + w[-1], y[~test]) + l2 * (w[:-1] ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            correct += int(((xte @ w[:-1] + w[-1] > 0).double() == y[test]).sum())
    return correct / (2 * n)
