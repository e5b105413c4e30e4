"""The algorithms tunecli ships: one registry entry each, in menu order. No torch here.

Settings follow verl's example scripts for the same algorithm. Adding an algorithm is one more
``register_algorithm(AlgorithmSpec(...))`` (plus a ``@register_advantage`` / ``@register_policy_loss``
function when it brings new math).
"""

from __future__ import annotations

from tunecli.algorithms.registry import AlgorithmSpec, register_algorithm

# PPO's symmetric clip: grpo, dr_grpo, rloo and the REINFORCE++ pair.
_PPO_CLIP = {"actor.clip_ratio_low": 0.2, "actor.clip_ratio_high": 0.2}

GRPO = register_algorithm(AlgorithmSpec(
    name="grpo",
    description="Group-relative advantages scaled by the group std; clipped ratio, KL loss.",
    advantage="grpo",
    defaults={"algorithm.norm_adv_by_std_in_grpo": True, "actor.loss_agg_mode": "token-mean", **_PPO_CLIP,
              "actor.use_kl_loss": True},
))

DR_GRPO = register_algorithm(AlgorithmSpec(
    name="dr_grpo",
    description="Dr. GRPO: no std scaling, sum over tokens divided by a constant, no KL.",
    advantage="dr_grpo",
    defaults={"algorithm.norm_adv_by_std_in_grpo": False, "actor.loss_agg_mode": "seq-mean-token-sum-norm",
              **_PPO_CLIP, "actor.use_kl_loss": False},
))

DAPO = register_algorithm(AlgorithmSpec(
    name="dapo",
    description="DAPO: clip-higher (0.28), token-mean loss, drops zero-variance groups, no KL.",
    advantage="grpo",
    filter_groups=True,
    defaults={"algorithm.norm_adv_by_std_in_grpo": True, "actor.loss_agg_mode": "token-mean",
              "actor.clip_ratio_low": 0.2, "actor.clip_ratio_high": 0.28, "actor.use_kl_loss": False},
))

RLOO = register_algorithm(AlgorithmSpec(
    name="rloo",
    description="RLOO: leave-one-out baseline (needs rollout.n >= 2), no std scaling.",
    advantage="rloo",
    min_group_size=2,
    group_size_reason="RLOO's leave-one-out baseline is the mean of the prompt's other samples",
    defaults={"algorithm.norm_adv_by_std_in_grpo": False, "actor.loss_agg_mode": "token-mean", **_PPO_CLIP,
              "actor.use_kl_loss": True},
))

# verl recipe/gspo: adv_estimator grpo, loss_mode gspo, eps 3e-4 / 4e-4 (GSPO paper, sec. 5.1), no KL.
GSPO = register_algorithm(AlgorithmSpec(
    name="gspo",
    description="GSPO: sequence-level ratio (geometric mean over tokens) clipped to 3e-4/4e-4, "
    "seq-mean-token-mean, no KL.",
    advantage="grpo",
    policy_loss="gspo",
    defaults={"algorithm.norm_adv_by_std_in_grpo": True, "actor.loss_agg_mode": "seq-mean-token-mean",
              "actor.clip_ratio_low": 3e-4, "actor.clip_ratio_high": 4e-4, "actor.use_kl_loss": False},
))

# verl examples/reinforce_plus_plus_trainer: KL loss 0.001 with the k2 ('mse') estimator, token-mean.
REINFORCE_PLUS_PLUS = register_algorithm(AlgorithmSpec(
    name="reinforce_plus_plus",
    description="REINFORCE++: rewards whitened over the whole batch (token-weighted), no group baseline; k2 KL loss.",
    advantage="reinforce_plus_plus",
    grouped=False,
    defaults={"actor.loss_agg_mode": "token-mean", **_PPO_CLIP, "actor.use_kl_loss": True,
              "actor.kl_loss_type": "mse"},
))

REINFORCE_PLUS_PLUS_BASELINE = register_algorithm(AlgorithmSpec(
    name="reinforce_plus_plus_baseline",
    description="REINFORCE++-baseline: group-mean baseline (needs rollout.n >= 2), then whitened over the "
    "batch; k2 KL loss.",
    advantage="reinforce_plus_plus_baseline",
    min_group_size=2,
    group_size_reason="REINFORCE++-baseline subtracts the mean reward of the prompt's samples; with one "
    "sample it is plain REINFORCE++",
    defaults={"actor.loss_agg_mode": "token-mean", **_PPO_CLIP, "actor.use_kl_loss": True,
              "actor.kl_loss_type": "mse"},
))

# verl examples/gpg_trainer: adv_estimator gpg, loss_mode gpg, no KL loss, token-mean.
GPG = register_algorithm(AlgorithmSpec(
    name="gpg",
    description="GPG: group-mean baseline scaled by N / non-zero rewards; plain policy gradient (no ratio, no "
    "clip), no KL.",
    advantage="gpg",
    policy_loss="gpg",
    min_group_size=2,
    group_size_reason="GPG's baseline is the mean reward of the prompt's samples",
    defaults={"algorithm.norm_adv_by_std_in_grpo": False, "actor.loss_agg_mode": "token-mean",
              "actor.use_kl_loss": False},
))

# verl's grpo_passk estimator with grpo's settings: Pass@k training credits only a group's best sample.
GRPO_PASSK = register_algorithm(AlgorithmSpec(
    name="grpo_passk",
    description="GRPO pass@k: only each group's best sample learns, by its lead over the second best "
    "(over the group std); clipped ratio, KL loss.",
    advantage="grpo_passk",
    min_group_size=2,
    group_size_reason="pass@k compares a prompt's best sample with its second best",
    defaults={"algorithm.norm_adv_by_std_in_grpo": True, "actor.loss_agg_mode": "token-mean", **_PPO_CLIP,
              "actor.use_kl_loss": True},
))
