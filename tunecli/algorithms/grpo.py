"""The GRPO math: small pure functions over tensors, tested against hand-computed values.

Shapes: N = samples in a (micro-)batch = prompts * group size G, L = response length (padded).
``mask`` is 1.0 on real response tokens and 0.0 on padding. Nothing here knows about models,
engines or ranks; the named algorithms (grpo, dr_grpo, dapo, rloo) are settings of these functions:

  grpo     advantage (r - mean) / (std + eps), clip 0.2/0.2, token-mean
  dr_grpo  advantage r - mean (no std), seq-mean-token-sum-norm
  dapo     grpo + clip-higher (eps_high 0.28) + dropping zero-variance groups, token-mean
  rloo     advantage r_i - mean(r_j, j != i)  (leave-one-out baseline)

Distributed/micro-batch normalisation: every aggregation mode is a sum of per-token or per-sequence
terms divided by a count over the *whole* mini-batch (all micro-batches, all ranks). Passing that
global count as ``normalizer`` makes each micro-batch's loss its exact share of the global loss,
so summing micro-batch gradients gives the global gradient (see ``aggregate``).
"""

from __future__ import annotations

from typing import Literal

import torch

AdvEstimator = Literal["grpo", "dr_grpo", "rloo"]
LossAggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
TOKEN_MODES = ("token-mean",)  # modes normalised by a token count; the others by a sequence count

ALGORITHM_ESTIMATOR: dict[str, AdvEstimator] = {"grpo": "grpo", "dapo": "grpo", "dr_grpo": "dr_grpo", "rloo": "rloo"}


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------
def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    estimator: AdvEstimator = "grpo",
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Outcome advantages, one per sample, from rewards grouped prompt-major.

    rewards: [N] with N = B * G, sample j of prompt i at i * G + j. Returns [N].
    A group of one has mean 0 and std 1 (verl's rule): its advantage is its raw reward.
    A tied group (all rewards equal) gets advantage 0 in every estimator.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # [B, G]
    if group_size == 1:
        return r.view(-1).clone()  # [N]  mean 0, std 1
    mean = r.mean(dim=1, keepdim=True)  # [B, 1]
    if estimator == "rloo":
        # Leave-one-out baseline: mean of the other G-1 rewards = (sum - r_i) / (G - 1).
        baseline = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)  # [B, G]
        return (r - baseline).view(-1)  # [N]
    adv = r - mean  # [B, G]
    if estimator == "grpo" and norm_by_std:
        std = r.std(dim=1, keepdim=True)  # [B, 1]  unbiased, as torch.std and verl
        adv = adv / (std + eps)  # [B, G]
    return adv.view(-1)  # [N]


def nonzero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool: groups whose rewards are not all equal (DAPO keeps only these; tied ones teach nothing)."""
    r = rewards.view(-1, group_size)  # [B, G]
    return (r.max(dim=1).values - r.min(dim=1).values) > 0  # [B]


# ---------------------------------------------------------------------------------------------
# Token log-probs and entropy
# ---------------------------------------------------------------------------------------------
def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token) from logits without materialising the full log-softmax.

    logits: [N, L, V], token_ids: [N, L] -> [N, L]
    """
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)  # [N, L]
    return picked - torch.logsumexp(logits, dim=-1)  # [N, L]


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution. logits: [N, L, V] -> [N, L]"""
    logp = torch.log_softmax(logits, dim=-1)  # [N, L, V]
    return -(logp.exp() * logp).sum(dim=-1)  # [N, L]


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over positions where mask is 1. A fully-masked row gives 0, not NaN."""
    total = (values * mask).sum() if dim is None else (values * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def aggregate(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggMode,
    max_response_length: int | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce per-token losses [N, L] to a scalar.

    token-mean                sum over all tokens / number of tokens
    seq-mean-token-sum        mean over sequences of each sequence's token sum
    seq-mean-token-mean       mean over sequences of each sequence's token mean
    seq-mean-token-sum-norm   mean over sequences of (token sum / max_response_length)  (Dr. GRPO:
                              1/G sum_i 1/L_max sum_t; a constant divisor removes the length bias)

    ``normalizer``: the count the mean divides by (tokens for token-mean, sequences otherwise).
    Default: this batch's own count. Pass the mini-batch's global count to get this micro-batch's
    exact share of the global loss (micro-batch shares then sum to the mini-batch loss).
    """
    mask = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        total = (loss_mat * mask).sum()
        count = mask.sum()
    else:
        if mode == "seq-mean-token-sum":
            per_seq = (loss_mat * mask).sum(dim=-1)  # [N]
        elif mode == "seq-mean-token-mean":
            per_seq = masked_mean(loss_mat, mask, dim=-1)  # [N]
        elif mode == "seq-mean-token-sum-norm":
            if not max_response_length:
                raise ValueError("seq-mean-token-sum-norm needs max_response_length")
            per_seq = (loss_mat * mask).sum(dim=-1) / max_response_length  # [N]
        else:
            raise ValueError(f"unknown loss_agg_mode {mode!r}")
        total = per_seq.sum()
        count = (mask.sum(dim=-1) > 0).to(loss_mat.dtype).sum()  # sequences with at least one token
    denom = count.clamp(min=1) if normalizer is None else torch.as_tensor(max(normalizer, 1e-12))
    return total / denom


def normalizer_count(mask: torch.Tensor, mode: LossAggMode) -> float:
    """The count ``aggregate`` divides by, for a batch: tokens (token-mean) or non-empty sequences."""
    if mode in TOKEN_MODES:
        return float(mask.sum())
    return float((mask.sum(dim=-1) > 0).sum())


# ---------------------------------------------------------------------------------------------
# Loss terms
# ---------------------------------------------------------------------------------------------
def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO-clip loss with asymmetric clipping and optional dual clip.

    logp, old_logp, mask: [N, L]; advantages: [N] (one per sample) or [N, L].
    loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)); for A < 0 the loss is
    further capped at -A * clip_ratio_c (dual clip: a huge ratio on a bad sample cannot explode).
    Returns (loss_mat [N, L], metrics of clip fractions over masked tokens).
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [N, 1] or [N, L]
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)  # [N, L]  keeps exp() finite
    ratio = torch.exp(log_ratio)  # [N, L]
    loss_unclipped = -adv * ratio  # [N, L]
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [N, L]
    loss = torch.maximum(loss_unclipped, loss_clipped)  # [N, L]
    metrics = {"clip_frac": masked_mean((loss_clipped > loss_unclipped).float(), mask)}
    if clip_ratio_c is not None:
        loss_dual = -adv * clip_ratio_c  # [N, 1]
        dual = (adv < 0) & (loss > loss_dual)  # [N, L]
        loss = torch.where(dual, torch.minimum(loss, loss_dual), loss)  # [N, L]
        metrics["dual_clip_frac"] = masked_mean(dual.float(), mask)
    metrics["ratio_mean"] = masked_mean(ratio.detach(), mask)
    return loss, metrics


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate, d = logp - ref_logp. [N, L] -> [N, L]

    k1 ('k1', 'kl')              d
    k2 ('k2', 'mse')             d^2 / 2
    k3 ('k3', 'low_var_kl')      exp(-d) + d - 1, clamped to [-10, 10] (Schulman's unbiased, >= 0)
    """
    d = logp - ref_logp  # [N, L]
    if kind in ("k1", "kl"):
        return d
    if kind in ("k2", "mse"):
        return 0.5 * d.square()
    if kind in ("k3", "low_var_kl"):
        return (torch.exp(-d) + d - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {kind!r}")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float | None,
    loss_agg_mode: LossAggMode,
    max_response_length: int,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_type: str = "low_var_kl",
    entropy: torch.Tensor | None = None,
    entropy_coeff: float = 0.0,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss = pg_loss - entropy_coeff * entropy + kl_coef * KL, each aggregated the same way.

    All tensors [N, L] except advantages [N]. Returns (scalar loss, detached metrics).
    """
    agg = dict(mode=loss_agg_mode, max_response_length=max_response_length, normalizer=normalizer)
    pg_mat, metrics = clipped_surrogate(logp, old_logp, advantages, mask, clip_low, clip_high, clip_ratio_c)
    pg_loss = aggregate(pg_mat, mask, **agg)
    loss = pg_loss
    metrics["pg_loss"] = pg_loss
    if ref_logp is not None:
        kl = aggregate(kl_penalty(logp, ref_logp, kl_type), mask, **agg)
        metrics["kl"] = kl
        if kl_coef:
            loss = loss + kl_coef * kl
    if entropy is not None:
        ent = aggregate(entropy, mask, **agg)
        metrics["entropy"] = ent
        if entropy_coeff:
            loss = loss - entropy_coeff * ent
    return loss, {k: v.detach() for k, v in metrics.items()}
