"""GPG (verl's compute_gpg_outcome_advantage and 'gpg' loss_mode) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from tunecli.algorithms import get_algorithm
from tunecli.algorithms.advantages import compute_advantages
from tunecli.algorithms.losses import policy_loss
from tunecli.config.io import apply_overrides


def test_gpg_advantage_hand_computed():
    # 8 samples, 4 non-zero rewards -> alpha = 8 / 4 = 2; group means 0.25 and 0.75
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 1])
    adv = compute_advantages("gpg", rewards, 4, lengths=torch.ones(8), norm_by_std=True)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0.5, 0.5, -1.5, 0.5])


def test_gpg_alpha_counts_the_whole_batch_over_ranks():
    # this rank holds the first group (4 samples, 1 non-zero); the other rank holds 4 samples, 3 non-zero
    other_rank = torch.tensor([4.0, 3.0], dtype=torch.float64)
    adv = compute_advantages("gpg", torch.tensor([1.0, 0, 0, 0]), 4, lengths=torch.ones(4), norm_by_std=False,
                             all_reduce=lambda t: t + other_rank)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])  # alpha 2, as on one rank


def test_gpg_all_zero_rewards_and_dropped_samples():
    adv = compute_advantages("gpg", torch.zeros(4), 2, lengths=torch.ones(4), norm_by_std=False)
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]
    # a sample with length 0 does not count: 3 counted, 1 non-zero -> alpha 3
    adv = compute_advantages("gpg", torch.tensor([1.0, 0, 0, 0]), 2, lengths=torch.tensor([1.0, 1, 1, 0]),
                             norm_by_std=False)
    assert adv.tolist() == pytest.approx([1.5, -1.5, 0.0, 0.0])


def test_gpg_loss_is_minus_advantage_times_logp_without_ratio_or_clip():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    old_logp = torch.tensor([[-5.0, -5.0], [-0.5, -3.0]])  # a large ratio: not clipped by GPG
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, metrics = policy_loss(logp, old_logp, torch.tensor([2.0, -1.0]), mask, clip_low=0.2, clip_high=0.2,
                                clip_ratio_c=3.0, loss_agg_mode="token-mean", max_response_length=2,
                                loss_mode="gpg")
    # per token: -2 * -1 = 2, -2 * -2 = 4, -(-1) * -0.5 = -0.5; token-mean over 3 tokens
    assert loss.item() == pytest.approx((2 + 4 - 0.5) / 3)
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-2 / 3, -2 / 3, 1 / 3, 0.0])
    assert metrics["clip_frac"].item() == 0.0


def test_gpg_is_an_algorithm_and_verl_keys_reach_it():
    spec = get_algorithm("gpg")
    assert (spec.advantage, spec.policy_loss, spec.min_group_size) == ("gpg", "gpg", 2)
    data = apply_overrides({}, ["algorithm.adv_estimator=gpg", "actor_rollout_ref.actor.policy_loss.loss_mode=gpg"])
    assert data["algorithm"]["name"] == "gpg"


def test_the_trainer_runs_gpg_advantages_and_loss():
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.loop import Trainer
    from tunecli.trainer.rollout import Rollout

    trainer = Trainer(recipe_from_dict({}, ["algorithm.name=gpg", "rollout.n=2"]))
    assert trainer.algorithm.policy_loss == "gpg"
    rollout = Rollout(prompt_ids=[[1]] * 4, response_ids=[[5, 6], [5], [5, 6, 7], [5]], finished=[True] * 4,
                      group_size=2)
    advantages, _, _ = trainer._advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), rollout)
    assert advantages.tolist() == pytest.approx([2.0, -2.0, 0.0, 0.0])  # alpha 4 / 1, group means 0.5 and 0
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    loss, stats = trainer._policy_loss(logp, logp.detach(), None, torch.tensor([1.0, -1.0]), torch.ones(2, 2),
                                       None, None)
    assert torch.isfinite(loss) and "dual_clip_frac" not in stats
