"""The shared algorithm math (group advantages, aggregation, clipped surrogate, KL, log-probs) against
values computed by hand (numbers worked out in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from tunecli.algorithms import core, losses
from tunecli.algorithms.advantages import compute_advantages, nonzero_variance_groups

T = torch.tensor


def advantages(rewards, group_size, estimator="grpo", norm_by_std=True):
    # Group estimators weigh nothing by length; every response is 1 token here.
    return compute_advantages(estimator, rewards, group_size, lengths=torch.ones_like(rewards), norm_by_std=norm_by_std)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


# ------------------------------------------------------------------ advantages
def test_grpo_advantage_std_scaled():
    # group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(4*0.25/3) = 0.57735 -> +-0.5/0.57735 = +-0.866025
    adv = advantages(T([1.0, 0.0, 0.0, 1.0]), 4)
    assert close(adv, [0.866025, -0.866025, -0.866025, 0.866025])


def test_grpo_advantage_two_groups_independent():
    # group 1 [3, 1]: mean 2, std sqrt(2) -> +-1/1.41421 = +-0.707107; group 2 [0, 2] likewise
    adv = advantages(T([3.0, 1.0, 0.0, 2.0]), 2)
    assert close(adv, [0.707107, -0.707107, -0.707107, 0.707107])


def test_dr_grpo_advantage_no_std():
    # [1, 0, 0, 0]: mean 0.25 -> [0.75, -0.25, -0.25, -0.25]
    adv = advantages(T([1.0, 0.0, 0.0, 0.0]), 4, estimator="dr_grpo")
    assert close(adv, [0.75, -0.25, -0.25, -0.25])
    # grpo with norm_by_std off is the same thing
    assert close(advantages(T([1.0, 0.0, 0.0, 0.0]), 4, norm_by_std=False), adv)


def test_rloo_advantage_leave_one_out():
    # [1, 0, 0, 0]: sample 0 baseline mean(0,0,0)=0 -> 1; others baseline mean(1,0,0)=1/3 -> -1/3
    adv = advantages(T([1.0, 0.0, 0.0, 0.0]), 4, estimator="rloo")
    assert close(adv, [1.0, -1 / 3, -1 / 3, -1 / 3])


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_tied_group_has_zero_advantage(estimator):
    adv = advantages(T([0.7, 0.7, 0.7, 1.0, 0.0, 1.0]), 3, estimator=estimator)
    assert close(adv[:3], [0.0, 0.0, 0.0])
    assert not torch.isnan(adv).any()


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_group_of_one_is_raw_reward(estimator):
    # mean 0 and std 1 for a group of one: the advantage is the reward itself
    adv = advantages(T([0.5, 1.0, 0.0]), 1, estimator=estimator)
    assert close(adv, [0.5, 1.0, 0.0])


def test_group_size_must_divide():
    with pytest.raises(ValueError):
        advantages(T([1.0, 0.0, 1.0]), 2)


def test_unknown_estimator_and_bad_lengths_raise():
    with pytest.raises(ValueError, match="rloo"):
        advantages(T([1.0, 0.0]), 2, estimator="rlo")
    with pytest.raises(ValueError, match="lengths"):
        compute_advantages("grpo", T([1.0, 0.0]), 2, lengths=T([1.0]), norm_by_std=True)


def test_nonzero_variance_groups():
    keep = nonzero_variance_groups(T([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2)
    assert keep.tolist() == [False, True, False]


# ------------------------------------------------------------------ aggregation
# Two sequences: seq 0 has tokens [1, 2, 3] (3 real), seq 1 has [4, pad, pad] (1 real).
LOSS = T([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
MASK = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_agg_token_mean():
    assert close(core.aggregate(LOSS, MASK, "token-mean"), (1 + 2 + 3 + 4) / 4)  # 2.5


def test_agg_seq_mean_token_sum():
    assert close(core.aggregate(LOSS, MASK, "seq-mean-token-sum"), (6 + 4) / 2)  # 5.0


def test_agg_seq_mean_token_mean():
    assert close(core.aggregate(LOSS, MASK, "seq-mean-token-mean"), (2 + 4) / 2)  # 3.0


def test_agg_seq_mean_token_sum_norm():
    # (6/8 + 4/8) / 2 = 0.625 with a constant max length 8
    assert close(core.aggregate(LOSS, MASK, "seq-mean-token-sum-norm", max_response_length=8), 0.625)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_shares_sum_to_whole(mode):
    # Splitting a batch into micro-batches with the global normalizer gives back the full loss.
    whole = core.aggregate(LOSS, MASK, mode, max_response_length=8)
    norm = core.normalizer_count(MASK, mode)
    parts = sum(core.aggregate(LOSS[i : i + 1], MASK[i : i + 1], mode, 8, normalizer=norm) for i in range(2))
    assert close(parts, whole)


def test_masked_mean_empty_row_is_zero():
    assert close(core.masked_mean(T([[5.0, 5.0]]), T([[0.0, 0.0]]), dim=-1), [0.0])


# ------------------------------------------------------------------ clipped surrogate
def _one_token(logp_ratio, adv, **kw):
    logp = T([[math.log(logp_ratio)]])
    loss, metrics = losses.clipped_surrogate(logp, T([[0.0]]), T([adv]), T([[1.0]]), **kw)
    return loss.item(), metrics


def test_ratio_inside_clip_range_is_unclipped():
    loss, m = _one_token(1.1, 2.0, clip_low=0.2, clip_high=0.2)
    assert math.isclose(loss, -2.2, rel_tol=1e-5) and m["clip_frac"].item() == 0.0


def test_clip_high_positive_advantage():
    # ratio 1.5, A=+1: max(-1.5, -1.2) = -1.2 (gain capped at 1 + 0.2)
    loss, m = _one_token(1.5, 1.0, clip_low=0.2, clip_high=0.2)
    assert math.isclose(loss, -1.2, rel_tol=1e-5) and m["clip_frac"].item() == 1.0
    # clip-higher (DAPO 0.28): -1.28
    loss, _ = _one_token(1.5, 1.0, clip_low=0.2, clip_high=0.28)
    assert math.isclose(loss, -1.28, rel_tol=1e-5)


def test_clip_low_negative_advantage():
    # ratio 0.5, A=-1: max(0.5, 0.8) = 0.8 (pushing a bad sample's prob down stops at 1 - 0.2)
    loss, m = _one_token(0.5, -1.0, clip_low=0.2, clip_high=0.2)
    assert math.isclose(loss, 0.8, rel_tol=1e-5) and m["clip_frac"].item() == 1.0


def test_no_clip_on_the_other_sides():
    # ratio 0.5, A=+1: max(-0.5, -0.8) = -0.5 (unclipped: the pessimistic side)
    assert math.isclose(_one_token(0.5, 1.0, clip_low=0.2, clip_high=0.2)[0], -0.5, rel_tol=1e-5)
    # ratio 1.5, A=-1 without dual clip: max(1.5, 1.2) = 1.5
    assert math.isclose(_one_token(1.5, -1.0, clip_low=0.2, clip_high=0.2, clip_ratio_c=None)[0], 1.5, rel_tol=1e-5)


def test_dual_clip_caps_negative_advantage():
    # ratio 5, A=-1: max(5, 1.2) = 5, dual clip caps at 3 * 1 = 3
    loss, m = _one_token(5.0, -1.0, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0)
    assert math.isclose(loss, 3.0, rel_tol=1e-5) and m["dual_clip_frac"].item() == 1.0
    # below the cap nothing changes: ratio 2 -> 2
    loss, m = _one_token(2.0, -1.0, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0)
    assert math.isclose(loss, 2.0, rel_tol=1e-5) and m["dual_clip_frac"].item() == 0.0
    # positive advantages are never dual-clipped: ratio 5, A=+1 -> -1.2
    assert math.isclose(_one_token(5.0, 1.0, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0)[0], -1.2, rel_tol=1e-5)


def test_surrogate_gradient_on_policy():
    # At ratio 1 the gradient of -A*ratio w.r.t. logp is -A (the REINFORCE gradient).
    logp = torch.zeros(1, 2, requires_grad=True)
    loss_mat, _ = losses.clipped_surrogate(logp, torch.zeros(1, 2), T([0.5]), torch.ones(1, 2))
    core.aggregate(loss_mat, torch.ones(1, 2), "token-mean").backward()
    assert close(logp.grad, [[-0.25, -0.25]])


# ------------------------------------------------------------------ KL estimators
def test_kl_estimators_by_hand():
    logp, ref = T([[-1.0, -2.0]]), T([[-1.5, -2.0]])  # d = [0.5, 0]
    assert close(core.kl_penalty(logp, ref, "k1"), [[0.5, 0.0]])
    assert close(core.kl_penalty(logp, ref, "k2"), [[0.125, 0.0]])
    # k3 = exp(-0.5) + 0.5 - 1 = 0.106531
    assert close(core.kl_penalty(logp, ref, "k3"), [[0.106531, 0.0]])
    assert close(core.kl_penalty(logp, ref, "low_var_kl"), [[0.106531, 0.0]])
    assert close(core.kl_penalty(logp, ref, "kl"), core.kl_penalty(logp, ref, "k1"))
    assert close(core.kl_penalty(logp, ref, "mse"), core.kl_penalty(logp, ref, "k2"))


def test_low_var_kl_is_clamped():
    # d = -20: exp(20) - 21 is huge -> clamped to 10
    assert close(core.kl_penalty(T([[-20.0]]), T([[0.0]]), "low_var_kl"), [[10.0]])


def test_unknown_kl_raises():
    with pytest.raises(ValueError):
        core.kl_penalty(T([[0.0]]), T([[0.0]]), "k4")


# ------------------------------------------------------------------ log-probs, entropy, total loss
def test_token_logprobs_and_entropy():
    logits = torch.log(T([[[0.5, 0.25, 0.25]]]))  # one position, p = [.5, .25, .25]
    assert close(core.token_logprobs(logits, torch.tensor([[1]])), [[math.log(0.25)]])
    # H = -(.5 ln .5 + 2 * .25 ln .25) = 1.039721
    assert close(core.entropy_from_logits(logits), [[1.039721]])


def test_total_loss_combines_terms():
    logp = T([[-1.0, -2.0]])
    mask = torch.ones(1, 2)
    loss, m = losses.policy_loss(
        logp, logp, T([1.0]), mask,
        clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0, loss_agg_mode="token-mean", max_response_length=2,
        ref_logp=T([[-1.5, -2.0]]), kl_coef=0.1, kl_type="k1", entropy=T([[2.0, 4.0]]), entropy_coeff=0.01,
    )
    # pg = -1 (ratio 1, A 1); kl k1 mean = 0.25; entropy mean = 3 -> -1 + 0.025 - 0.03 = -1.005
    assert close(loss, -1.005)
    assert close(m["kl"], 0.25) and close(m["entropy"], 3.0) and close(m["pg_loss"], -1.0)
