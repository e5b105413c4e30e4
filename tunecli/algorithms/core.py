"""Tensor helpers every algorithm shares: masked means, loss aggregation, KL estimators, log-probs.

Shapes: N = samples in a (micro-)batch, L = response length (padded). ``mask`` is 1.0 on real
response tokens and 0.0 on padding.

Distributed/micro-batch normalisation: every aggregation mode is a sum of per-token or per-sequence
terms divided by a count over the *whole* mini-batch (all micro-batches, all ranks). Passing that
global count as ``normalizer`` makes each micro-batch's loss its exact share of the global loss,
so summing micro-batch gradients gives the global gradient (see ``aggregate``).
"""

from __future__ import annotations

import torch

from tunecli.algorithms.registry import LossAggMode

TOKEN_MODES = ("token-mean",)  # modes normalised by a token count; the others by a sequence count


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
    """Reduce per-token losses [N, L] to a scalar (verl's ``agg_loss``).

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
