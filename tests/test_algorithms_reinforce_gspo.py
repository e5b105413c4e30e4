"""REINFORCE++ (batch whitening, token-weighted, reduced over ranks) and GSPO's sequence-level ratio,
against values computed by hand (numbers worked out in the comments)."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from tunecli.algorithms.advantages import compute_advantages
from tunecli.algorithms.losses import gspo_surrogate, policy_loss

T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


# ------------------------------------------------------------------ REINFORCE++
def test_reinforce_plus_plus_whitens_over_tokens():
    # rewards [1, 0, 2] with 1, 2, 1 tokens: token values [1, 0, 0, 2], mean 3/4 = 0.75.
    # centred squares 0.0625 + 2 * 0.5625 + 1.5625 = 2.75, unbiased var 2.75 / 3 = 0.916667, std 0.957427.
    # -> (1 - .75) / .957427 = 0.261116, (0 - .75) / .957427 = -0.783349, (2 - .75) / .957427 = 1.305582
    adv = compute_advantages("reinforce_plus_plus", T([1.0, 0.0, 2.0]), 1, lengths=T([1, 2, 1]), norm_by_std=True)
    assert close(adv, [0.261116, -0.783349, 1.305582])
    # Sample-weighted (all lengths 1) the mean would be 1: the long response's weight matters.
    same_weights = compute_advantages("reinforce_plus_plus", T([1.0, 0.0, 2.0]), 1, lengths=T([1, 1, 1]),
                                      norm_by_std=True)
    assert close(same_weights, [0.0, -1.0, 1.0])  # mean 1, var (0 + 1 + 1) / 2 = 1


def test_reinforce_plus_plus_baseline_subtracts_group_mean_then_whitens():
    # groups [1, 0] -> [.5, -.5] and [0, 0] -> [0, 0]; lengths [2, 1, 1, 2] (6 tokens).
    # mean (2 * .5 - .5) / 6 = 0.083333; deviations .416667, -.583333, -.083333, -.083333;
    # weighted squares 2 * .173611 + .340278 + .006944 + 2 * .006944 = .708333; var .708333 / 5 = .141667,
    # std .376386 -> 1.107019, -1.549826, -0.221404, -0.221404 (whitening moves the tied group off 0, as verl)
    adv = compute_advantages("reinforce_plus_plus_baseline", T([1.0, 0.0, 0.0, 0.0]), 2, lengths=T([2, 1, 1, 2]),
                             norm_by_std=True)
    assert close(adv, [1.107019, -1.549826, -0.221404, -0.221404])


def test_reinforce_plus_plus_of_a_tied_batch_is_zero():
    adv = compute_advantages("reinforce_plus_plus", T([0.5, 0.5, 0.5]), 1, lengths=T([3, 1, 2]), norm_by_std=True)
    assert close(adv, [0.0, 0.0, 0.0]) and not torch.isnan(adv).any()


def test_zero_length_samples_do_not_count():
    # Weight 0 (e.g. a filtered group): the statistics are those of the other samples alone.
    with_ghost = compute_advantages("reinforce_plus_plus", T([1.0, 0.0, 2.0, 100.0]), 1, lengths=T([1, 2, 1, 0]),
                                    norm_by_std=True)
    assert close(with_ghost[:3], [0.261116, -0.783349, 1.305582])


def _verl_masked_whiten(values, mask):
    # verl's torch_functional.masked_whiten over a [N, L] matrix (unbiased masked_var).
    mean = (values * mask).sum() / mask.sum()
    var = ((values - mean).square() * mask).sum() / mask.sum() * mask.sum() / (mask.sum() - 1)
    return (values - mean) * torch.rsqrt(var + 1e-8)


def test_matches_verls_token_matrix_form():
    # verl broadcasts each outcome over its response tokens ([N, L]) and whitens over all real tokens.
    torch.manual_seed(0)
    rewards, lengths = torch.randint(0, 3, (12,)).float(), torch.randint(1, 8, (12,))
    mask = (torch.arange(7)[None] < lengths[:, None]).float()  # [N, L]
    plain = _verl_masked_whiten(rewards[:, None] * mask, mask) * mask  # [N, L]
    groups = rewards.view(-1, 4)  # [B, G]
    centred = (groups - groups.mean(dim=1, keepdim=True)).view(-1)  # [N]
    baseline = _verl_masked_whiten(centred[:, None] * mask, mask) * mask  # [N, L]
    for name, expected in (("reinforce_plus_plus", plain), ("reinforce_plus_plus_baseline", baseline)):
        adv = compute_advantages(name, rewards, 4, lengths=lengths, norm_by_std=True)  # [N]
        assert close(adv[:, None] * mask, expected), name


class TwoRanks:
    """A sum over two ranks simulated by two threads: each all_reduce waits for the other rank's tensor."""

    def __init__(self):
        self.barrier = threading.Barrier(2, timeout=30)
        self.slots: list[torch.Tensor | None] = [None, None]
        self.calls = 0

    def all_reduce(self, rank):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = self.slots[0] + self.slots[1]
            self.calls += 1
            self.barrier.wait()  # both have read before either overwrites its slot
            return total

        return reduce


@pytest.mark.parametrize("name", ["reinforce_plus_plus", "reinforce_plus_plus_baseline", "grpo", "rloo"])
def test_two_ranks_give_the_one_rank_result(name):
    rewards = T([1.0, 0.0, 0.5, 0.5, 2.0, 1.0, 0.0, 0.0])
    lengths = T([3, 1, 4, 2, 1, 5, 2, 2])
    whole = compute_advantages(name, rewards, 2, lengths=lengths, norm_by_std=True)
    ranks, halves = TwoRanks(), [None, None]

    def run(rank):
        part = slice(4 * rank, 4 * rank + 4)  # whole groups per rank, as the trainer shards them
        halves[rank] = compute_advantages(name, rewards[part], 2, lengths=lengths[part], norm_by_std=True,
                                          all_reduce=ranks.all_reduce(rank))

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert close(torch.cat(halves), whole)
    if name.startswith("reinforce"):
        # The reduction is what makes them agree: one half on its own is whitened differently.
        alone = compute_advantages(name, rewards[:4], 2, lengths=lengths[:4], norm_by_std=True)
        assert not close(alone, whole[:4]) and ranks.calls > 0


# ------------------------------------------------------------------ GSPO
# Two sequences, lengths 2 and 3; seq 0's padding holds a huge log-prob that must not count.
LOGP = T([[0.1, 0.3, 50.0], [0.0, -0.3, 0.0]])
OLD = torch.zeros(2, 3)
MASK = T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
ADV = T([1.0, -1.0])


def test_gspo_sequence_ratio_loss_and_gradient():
    # s_0 = exp((0.1 + 0.3) / 2) = exp(0.2) = 1.221403 > 1.2 with A = +1: clipped, loss -1.2 per token, no gradient.
    # s_1 = exp((0 - 0.3 + 0) / 3) = exp(-0.1) = 0.904837 inside [0.8, 1.2], A = -1: loss 0.904837 per token.
    # seq-mean-token-mean: (-1.2 + 0.904837) / 2 = -0.147581.
    logp = LOGP.clone().requires_grad_()
    loss, m = policy_loss(logp, OLD, ADV, MASK, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0,
                          loss_agg_mode="seq-mean-token-mean", max_response_length=3, loss_mode="gspo")
    assert close(loss, -0.147581)
    loss.backward()
    # d/d logp_1t of (1/2)(1/3) sum_t (-A s_1,t) = (1/6) * s_1 = 0.150806, the same on every token of seq 1.
    assert close(logp.grad, [[0.0, 0.0, 0.0], [0.150806, 0.150806, 0.150806]])
    assert close(m["clip_frac"], 2 / 5)  # seq 0's 2 tokens of 5
    assert close(m["ratio_mean"], (2 * math.exp(0.2) + 3 * math.exp(-0.1)) / 5)  # 1.031464
    assert "dual_clip_frac" not in m  # GSPO has no dual clip


def test_gspo_token_ratio_equals_the_sequence_ratio():
    loss_mat, _ = gspo_surrogate(LOGP, OLD, T([1.0, 1.0]), MASK, clip_low=10.0, clip_high=10.0)
    # Unclipped with A = 1: -s_i on every real token of sequence i.
    assert close(loss_mat * MASK, [[-math.exp(0.2), -math.exp(0.2), 0.0], [-math.exp(-0.1)] * 3])


def test_vanilla_differs_on_the_same_example():
    # Token-level ratios: seq 1's second token has exp(-0.3) = 0.740818 < 0.8 with A = -1, so vanilla clips it
    # (no gradient), while GSPO judged the whole sequence (0.904837) and kept it.
    logp = LOGP.clone().requires_grad_()
    loss, _ = policy_loss(logp, OLD, ADV, MASK, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0,
                          loss_agg_mode="seq-mean-token-mean", max_response_length=3)
    loss.backward()
    assert close(logp.grad[1], [1 / 6, 0.0, 1 / 6])


def test_unknown_loss_mode_raises():
    with pytest.raises(ValueError, match="gspo"):
        policy_loss(LOGP, OLD, ADV, MASK, clip_low=0.2, clip_high=0.2, clip_ratio_c=None,
                    loss_agg_mode="token-mean", max_response_length=3, loss_mode="gpso")
