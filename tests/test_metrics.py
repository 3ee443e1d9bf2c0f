"""The content-code domain classifier measures the modality, not the people."""

from __future__ import annotations

import torch

from bundle.metrics import content_domain_accuracy


def codes(subjects: int, per_subject: int, domain_shift: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Content codes whose channel means depend strongly on the subject, plus a domain shift."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(subjects, 16, 1, 1, generator=g) * 2
    ids = torch.arange(subjects).repeat_interleave(per_subject)
    return offsets[ids] + domain_shift + 0.1 * torch.randn(len(ids), 16, 4, 4, generator=g), ids


def test_classifier_ignores_subject_identity_when_folds_hold_out_subjects():
    ct, ct_ids = codes(6, 10, 0.0, seed=1)
    mr, mr_ids = codes(6, 10, 0.0, seed=2)  # other people, same content distribution
    assert content_domain_accuracy(ct, mr) > 0.9  # slice folds: the classifier recognises people
    assert content_domain_accuracy(ct, mr, ct_ids, mr_ids) < 0.75  # subject folds: no modality to find


def test_classifier_sees_a_modality_shift_in_held_out_subjects():
    ct, ct_ids = codes(6, 10, 0.0, seed=1)
    mr, mr_ids = codes(6, 10, 3.0, seed=2)
    assert content_domain_accuracy(ct, mr, ct_ids, mr_ids) > 0.95
