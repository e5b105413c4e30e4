"""Outcome advantages, one per sample, from one scalar reward per sample (verl's adv estimators).

Samples are prompt-major: with group size G (``rollout.n``), sample j of prompt i is at i * G + j.
Every estimator is registered by name and called by ``compute_advantages`` with the same keywords:

  grpo                          (r - group mean) / (group std + eps); without std if norm_by_std is off
  dr_grpo                       r - group mean (Dr. GRPO: never scaled by the std)
  rloo                          r_i - mean(r_j, j != i)  (leave-one-out baseline)
  reinforce_plus_plus           r whitened over every response token of the batch
  reinforce_plus_plus_baseline  r - group mean, then whitened over every response token of the batch
  grpo_passk                    the group's best sample: (best - second best) [/ group std]; others 0
  gpg                           (N / number of non-zero rewards in the batch) * (r - group mean)

A group of one has mean 0 and std 1 (verl's rule): its group-relative advantage is its raw reward.
A tied group gets advantage 0 from every group estimator.

verl computes a [N, L] advantage (the outcome reward broadcast over the response tokens) and its
whitening takes mean and variance over all response tokens. Every token of a response has the same
value here (an outcome reward, discount gamma = 1 as in verl's default), so a response of L_i tokens
is one value with weight L_i, and the result is one advantage per sample, [N]. Callers broadcast it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tunecli.algorithms.registry import ADVANTAGE_ESTIMATORS, register_advantage

AllReduce = Callable[[torch.Tensor], torch.Tensor]
GRPO_EPS = 1e-6  # added to the group std (verl's epsilon)
WHITEN_EPS = 1e-8  # added to the batch variance (verl's masked_whiten)


def compute_advantages(
    name: str,
    rewards: torch.Tensor,
    group_size: int,
    *,
    lengths: torch.Tensor,
    norm_by_std: bool,
    all_reduce: AllReduce | None = None,
) -> torch.Tensor:
    """Advantages [N] of the estimator ``name`` (a spec's ``advantage``) for prompt-major rewards [N].

    lengths: [N] response token counts, the weight of each sample in batch-wide statistics (pass 0
    for samples that must not count, e.g. groups dropped by filter_groups).
    norm_by_std: divide by the group std (``algorithm.norm_adv_by_std_in_grpo``; grpo only).
    all_reduce: sums a tensor over data-parallel ranks (identity when None). Batch-wide estimators
    (REINFORCE++) reduce their sums with it, so N samples split over ranks give the same advantages
    as on one rank. Group estimators never call it: each rank holds whole groups.
    """
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {', '.join(ADVANTAGE_ESTIMATORS)}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if lengths.shape != rewards.shape:
        raise ValueError(f"lengths {tuple(lengths.shape)} must match rewards {tuple(rewards.shape)}")
    estimator = ADVANTAGE_ESTIMATORS[name]
    reduce = all_reduce if all_reduce is not None else _no_reduce
    return estimator(rewards.float(), group_size, lengths=lengths.float(), norm_by_std=norm_by_std, all_reduce=reduce)


def nonzero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool: groups whose rewards are not all equal (DAPO keeps only these; tied ones teach nothing)."""
    r = rewards.view(-1, group_size)  # [B, G]
    return (r.max(dim=1).values - r.min(dim=1).values) > 0  # [B]


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


# ---------------------------------------------------------------------------------------------
# Group-relative estimators: each rank holds whole groups, so lengths and all_reduce are unused.
# ---------------------------------------------------------------------------------------------
def _group_mean(r: torch.Tensor) -> torch.Tensor:
    """[B, G] -> [B, 1]; 0 for a group of one (verl: its baseline is nothing)."""
    return r.mean(dim=1, keepdim=True) if r.shape[1] > 1 else torch.zeros_like(r[:, :1])


@register_advantage("grpo")
def grpo_advantage(
    rewards: torch.Tensor, group_size: int, *, lengths: torch.Tensor, norm_by_std: bool, all_reduce: AllReduce
) -> torch.Tensor:
    r = rewards.view(-1, group_size)  # [B, G]
    adv = r - _group_mean(r)  # [B, G]
    if norm_by_std and group_size > 1:
        adv = adv / (r.std(dim=1, keepdim=True) + GRPO_EPS)  # [B, G]  unbiased std, as torch.std and verl
    return adv.reshape(-1)  # [N]


@register_advantage("dr_grpo")
def dr_grpo_advantage(
    rewards: torch.Tensor, group_size: int, *, lengths: torch.Tensor, norm_by_std: bool, all_reduce: AllReduce
) -> torch.Tensor:
    return grpo_advantage(rewards, group_size, lengths=lengths, norm_by_std=False, all_reduce=all_reduce)


@register_advantage("rloo")
def rloo_advantage(
    rewards: torch.Tensor, group_size: int, *, lengths: torch.Tensor, norm_by_std: bool, all_reduce: AllReduce
) -> torch.Tensor:
    if group_size == 1:
        return rewards.clone()  # [N]  nothing to leave out
    r = rewards.view(-1, group_size)  # [B, G]
    # Mean of the other G-1 rewards = (sum - r_i) / (G - 1).
    baseline = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)  # [B, G]
    return (r - baseline).reshape(-1)  # [N]


@register_advantage("grpo_passk")
def grpo_passk_advantage(
    rewards: torch.Tensor, group_size: int, *, lengths: torch.Tensor, norm_by_std: bool, all_reduce: AllReduce
) -> torch.Tensor:
    """verl's compute_grpo_passk_outcome_advantage: only each group's best sample gets an advantage,
    its lead over the second best (divided by the group std when norm_by_std); the others get 0."""
    if group_size < 2:
        raise ValueError("grpo_passk needs at least 2 samples per prompt")
    r = rewards.view(-1, group_size)  # [B, G]
    top = r.topk(2, dim=1)  # values, indices [B, 2]
    lead = top.values[:, 0] - top.values[:, 1]  # [B]
    if norm_by_std:
        lead = lead / (r.std(dim=1) + GRPO_EPS)  # [B]
    adv = torch.zeros_like(r).scatter(1, top.indices[:, :1], lead.unsqueeze(1))  # [B, G]
    return adv.reshape(-1)  # [N]


# ---------------------------------------------------------------------------------------------
# REINFORCE++: whitened over the whole batch (all ranks), each response weighted by its tokens.
# ---------------------------------------------------------------------------------------------
def token_weighted_whiten(values: torch.Tensor, weights: torch.Tensor, all_reduce: AllReduce) -> torch.Tensor:
    """verl's ``masked_whiten`` of per-sample values broadcast over their tokens: [N] -> [N].

    mean = sum w v / sum w, var = sum w (v - mean)^2 / (sum w - 1) (unbiased, as verl's masked_var),
    result (v - mean) / sqrt(var + 1e-8). Sums are reduced over ranks; a second reduction for the
    centred square keeps verl's two-pass arithmetic (no cancellation in sum v^2 - (sum v)^2 / n).
    Deliberate difference: verl raises on a batch of one token; here the variance divisor is
    clamped to 1, so that batch gets advantage 0.
    """
    w, v = weights.double(), values.double()  # [N]  float64 sums: exact enough over many ranks
    count, total = all_reduce(torch.stack([w.sum(), (w * v).sum()])).to(v.device)  # [2]
    mean = total / count.clamp(min=1)
    centred_sq = all_reduce((w * (v - mean).square()).sum().reshape(1)).to(v.device)[0]
    var = centred_sq / (count - 1).clamp(min=1)
    return ((v - mean) * torch.rsqrt(var + WHITEN_EPS)).to(values.dtype)  # [N]


@register_advantage("reinforce_plus_plus")
def reinforce_plus_plus_advantage(
    rewards: torch.Tensor, group_size: int, *, lengths: torch.Tensor, norm_by_std: bool, all_reduce: AllReduce
) -> torch.Tensor:
    """verl's compute_reinforce_plus_plus_outcome_advantage with gamma 1: the return of every token is r."""
    return token_weighted_whiten(rewards, lengths, all_reduce)  # [N]


@register_advantage("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline_advantage(
    rewards: torch.Tensor, group_size: int, *, lengths: torch.Tensor, norm_by_std: bool, all_reduce: AllReduce
) -> torch.Tensor:
    """verl's compute_reinforce_plus_plus_baseline_outcome_advantage: group mean off, then batch whitening."""
    r = rewards.view(-1, group_size)  # [B, G]
    centred = (r - _group_mean(r)).reshape(-1)  # [N]
    return token_weighted_whiten(centred, lengths, all_reduce)  # [N]


@register_advantage("gpg")
def gpg_advantage(
    rewards: torch.Tensor, group_size: int, *, lengths: torch.Tensor, norm_by_std: bool, all_reduce: AllReduce
) -> torch.Tensor:
    """verl's compute_gpg_outcome_advantage (f_norm 1): alpha * (r - group mean), alpha = N / #(r != 0).

    N and the non-zero count are over the whole batch (all ranks), counting the samples that take
    part (length > 0). No std scaling.
    """
    counted = lengths > 0  # [N]
    n, nonzero = all_reduce(torch.stack([counted.sum(), (counted & (rewards != 0)).sum()]).double()).to(rewards.device)
    alpha = n / nonzero.clamp(min=1)
    r = rewards.view(-1, group_size)  # [B, G]
    return (alpha * (r - _group_mean(r))).reshape(-1).to(rewards.dtype)  # [N]
