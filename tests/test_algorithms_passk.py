"""GRPO pass@k (verl's compute_grpo_passk_outcome_advantage) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from tunecli.algorithms import get_algorithm
from tunecli.algorithms.advantages import compute_advantages


def test_only_the_best_sample_of_each_group_learns():
    rewards = torch.tensor([0.0, 1.0, 0.5, 0.0, 2.0, 2.0, 1.0, 0.0])
    adv = compute_advantages("grpo_passk", rewards, 4, lengths=torch.ones(8), norm_by_std=False)
    # group 1: best 1.0 (index 1) leads 0.5 by 0.5; group 2: two best tied at 2.0 -> lead 0
    assert adv.tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def test_the_lead_is_divided_by_the_group_std():
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0])  # std (unbiased) = 0.5
    adv = compute_advantages("grpo_passk", rewards, 4, lengths=torch.ones(4), norm_by_std=True)
    assert adv.tolist() == pytest.approx([0.0, 1.0 / (0.5 + 1e-6), 0.0, 0.0])


def test_groups_of_one_are_refused():
    with pytest.raises(ValueError, match="at least 2 samples"):
        compute_advantages("grpo_passk", torch.tensor([1.0, 0.0]), 1, lengths=torch.ones(2), norm_by_std=True)
    assert get_algorithm("grpo_passk").min_group_size == 2
