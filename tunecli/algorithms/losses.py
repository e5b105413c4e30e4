"""Policy losses: per-token surrogate losses registered by name, and the total loss of an update.

Every registered loss takes ``(logp, old_logp, advantages, mask, *, clip_low, clip_high,
clip_ratio_c)`` with logp, old_logp, mask [N, L] and advantages [N] (one per sample) or [N, L], and
returns (loss_mat [N, L], metrics over masked tokens). ``policy_loss`` aggregates it with the KL and
entropy terms. A spec's ``policy_loss`` names the one its algorithm uses (verl's ``loss_mode``).
"""

from __future__ import annotations

import torch

from tunecli.algorithms.core import aggregate, kl_penalty, masked_mean
from tunecli.algorithms.registry import POLICY_LOSSES, LossAggMode, register_policy_loss


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [N, 1] or [N, L]


@register_policy_loss("vanilla")
def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO-clip loss with asymmetric clipping and optional dual clip (verl's 'vanilla').

    loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)); for A < 0 the loss is
    further capped at -A * clip_ratio_c (dual clip: a huge ratio on a bad sample cannot explode).
    """
    adv = _per_token(advantages)  # [N, 1] or [N, L]
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


@register_policy_loss("gspo")
def gspo_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's clipped loss with a sequence-level ratio (Zheng et al. 2025; verl's 'gspo' loss_mode).

    s_i = exp(mean over sequence i's real tokens of (logp - old_logp)), the geometric mean of its
    token ratios. Token form s_i,t = sg[s_i] * exp(logp_t - sg[logp_t]): equal to s_i in value, and
    its gradient is s_i * grad logp_t, so each sequence is clipped as a whole. The log-ratio is
    clamped at 10 as in verl. No dual clip (clip_ratio_c is ignored, as in verl).
    Padding never enters s_i.
    """
    adv = _per_token(advantages)  # [N, 1] or [N, L]
    real = mask > 0  # [N, L]
    token_log_ratio = torch.where(real, logp - old_logp, torch.zeros_like(logp))  # [N, L]
    seq_log_ratio = token_log_ratio.sum(dim=-1) / real.sum(dim=-1).clamp(min=1)  # [N]
    log_ratio = logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1)  # [N, L]
    ratio = torch.exp(log_ratio.clamp(max=10.0))  # [N, L]
    loss_unclipped = -adv * ratio  # [N, L]
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [N, L]
    loss = torch.maximum(loss_unclipped, loss_clipped)  # [N, L]
    metrics = {
        "clip_frac": masked_mean((loss_clipped > loss_unclipped).float(), mask),
        "ratio_mean": masked_mean(ratio.detach(), mask),
    }
    return loss, metrics


@register_policy_loss("gpg")
def gpg_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GPG's plain policy gradient (verl's 'gpg' loss_mode): loss = -A * logp, no ratio and no clip."""
    loss = -_per_token(advantages) * logp  # [N, L]
    ratio = torch.exp((logp - old_logp).detach().clamp(-20.0, 20.0))  # [N, L]  reported only
    return loss, {"clip_frac": torch.zeros((), device=logp.device), "ratio_mean": masked_mean(ratio, mask)}


def carries_gradient(advantages: torch.Tensor, *, kl_in_loss: bool, entropy_in_loss: bool) -> torch.Tensor:
    """[N] bool: the samples whose loss has a gradient. advantages: [N] or [N, L].

    Every registered surrogate is -A x f(ratio): zero, with a zero gradient, where the advantage is 0
    (tests/test_algorithms.py checks each one). Such a sample adds nothing to an update unless a KL
    or entropy term is in the loss; then every sample does.
    """
    if kl_in_loss or entropy_in_loss:
        return torch.ones(advantages.shape[0], dtype=torch.bool, device=advantages.device)
    per_sample = advantages if advantages.dim() == 1 else advantages.abs().amax(dim=-1)  # [N]
    return per_sample != 0


def policy_loss(
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
    loss_mode: str = "vanilla",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss = pg_loss - entropy_coeff * entropy + kl_coef * KL, each aggregated the same way.

    ``loss_mode`` picks the registered surrogate (a spec's ``policy_loss``). All tensors [N, L]
    except advantages [N]. Returns (scalar loss, detached metrics: pg_loss, clip_frac, ratio_mean,
    dual_clip_frac when the loss has a dual clip, kl with ref_logp, entropy with entropy).
    Deliberate difference from verl: GSPO is aggregated with ``loss_agg_mode`` like every loss
    (verl's compute_policy_loss_gspo always uses seq-mean-token-mean; the gspo spec makes it the
    default, and a recipe may choose another).
    """
    if loss_mode not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {loss_mode!r}; registered: {', '.join(POLICY_LOSSES)}")
    surrogate = POLICY_LOSSES[loss_mode]
    agg = {"mode": loss_agg_mode, "max_response_length": max_response_length, "normalizer": normalizer}
    pg_mat, metrics = surrogate(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                                clip_ratio_c=clip_ratio_c)
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
