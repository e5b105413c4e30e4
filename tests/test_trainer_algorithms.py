"""The trainer takes advantages, group filtering and the policy loss from the algorithm registry."""

from __future__ import annotations

import pytest
import torch

from tunecli.algorithms.advantages import compute_advantages
from tunecli.config.io import recipe_from_dict
from tunecli.trainer.loop import Trainer
from tunecli.trainer.rollout import Rollout

# Two prompts x 2 samples: prompt 0's rewards are tied (nothing to learn), prompt 1's differ.
REWARDS = torch.tensor([1.0, 1.0, 0.0, 1.0])
ROLLOUT = Rollout(prompt_ids=[[1]] * 4, response_ids=[[5, 6], [5], [5, 6, 7], [5]], finished=[True] * 4, group_size=2)


def advantages_of(*overrides: str):
    trainer = Trainer(recipe_from_dict({}, ["rollout.n=2", *overrides]))
    return trainer._advantages(REWARDS, ROLLOUT)


def test_dapo_filters_tied_groups_by_default():
    advantages, active, varied = advantages_of("algorithm.name=dapo")
    assert varied.tolist() == [False, True]
    assert active.tolist() == [False, False, True, True]
    assert advantages[:2].tolist() == [0.0, 0.0]


def test_dapo_obeys_filter_groups_false():
    _, active, _ = advantages_of("algorithm.name=dapo", "algorithm.filter_groups=false")
    assert active.tolist() == [True, True, True, True]


@pytest.mark.parametrize("filter_groups, expected", [("true", [False, False, True, True]), ("null", [True] * 4)])
def test_grpo_filters_only_when_asked(filter_groups, expected):
    _, active, _ = advantages_of("algorithm.name=grpo", f"algorithm.filter_groups={filter_groups}")
    assert active.tolist() == expected


def test_batch_estimators_weigh_only_the_samples_that_train():
    """REINFORCE++ whitens over the batch's tokens: filtered groups must not move its statistics."""
    advantages, active, _ = advantages_of("algorithm.name=reinforce_plus_plus", "algorithm.filter_groups=true")
    lengths = torch.tensor([0.0, 0.0, 3.0, 1.0])  # the tied group weighs nothing
    expected = compute_advantages("reinforce_plus_plus", REWARDS, 2, lengths=lengths, norm_by_std=True)
    assert torch.allclose(advantages, expected)
    unfiltered, _, _ = advantages_of("algorithm.name=reinforce_plus_plus", "algorithm.filter_groups=false")
    assert not torch.allclose(advantages[2:], unfiltered[2:])


@pytest.mark.parametrize("name, loss_mode", [("grpo", "vanilla"), ("gspo", "gspo")])
def test_the_policy_loss_is_the_algorithms(name, loss_mode):
    trainer = Trainer(recipe_from_dict({}, [f"algorithm.name={name}"]))
    assert trainer.algorithm.policy_loss == loss_mode
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)  # [2, 2]
    old = logp.detach() + torch.tensor([[0.1, -0.2], [0.0, 0.3]])
    mask = torch.ones(2, 2)
    loss, stats = trainer._policy_loss(logp, old, None, torch.tensor([1.0, -1.0]), mask, None, None)
    assert torch.isfinite(loss) and "pg_loss" in stats
    assert ("dual_clip_frac" in stats) == (loss_mode == "vanilla")  # GSPO has no dual clip
