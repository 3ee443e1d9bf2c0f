"""Measurable signals of disentanglement for stage-1 validation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["content_domain_accuracy"]


def _features(content: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and std of a content code: (N, C, h, w) -> (N, 2C)."""
    return torch.cat([content.mean(dim=(2, 3)), content.std(dim=(2, 3))], dim=1)


def _folds(n: int, subjects: torch.Tensor | None, folds: int) -> torch.Tensor:
    """Fold of every code: by subject when there are enough subjects, else interleaved slices."""
    if subjects is not None:
        ids = torch.unique(subjects)
        if len(ids) >= folds:
            rank = torch.searchsorted(ids, subjects)
            return rank % folds
    return torch.arange(n) % folds


def content_domain_accuracy(content_ct: torch.Tensor, content_mr: torch.Tensor, subjects_ct: torch.Tensor | None = None,
                            subjects_mr: torch.Tensor | None = None, folds: int = 2, l2: float = 1e-2) -> float:
    """Cross-validated balanced accuracy of a logistic-regression classifier telling CT from MR
    content codes (features: per-channel mean and std of each code).

    Near 0.5 (chance) means the content space is shared across modalities, the paper's
    p(c1) = p(c2); near 1.0 means the codes still carry the modality. With subject ids the folds
    hold out whole subjects: per-channel statistics also identify anatomy and people (CT and MR
    subjects differ), and a classifier tested on the subjects it was fitted to would score the
    people, not the modality.
    """
    if min(len(content_ct), len(content_mr)) < folds:
        raise ValueError(f"need at least {folds} content codes per domain, got {len(content_ct)} and {len(content_mr)}")
    x = torch.cat([_features(content_ct), _features(content_mr)]).double()
    y = torch.cat([torch.zeros(len(content_ct)), torch.ones(len(content_mr))]).double()
    fold = torch.cat([_folds(len(content_ct), subjects_ct, folds), _folds(len(content_mr), subjects_mr, folds)])
    hits = torch.zeros(2, dtype=torch.float64)
    for k in range(folds):
        test = fold == k
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
            right = ((xte @ w[:-1] + w[-1] > 0).double() == y[test]).double()
            for label in (0, 1):
                hits[label] += right[y[test] == label].sum()
    return float((hits[0] / len(content_ct) + hits[1] / len(content_mr)) / 2)
