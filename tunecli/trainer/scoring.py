"""Scoring a rollout: one reward per sample, from the recipe's reward function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tunecli.trainer.data import PromptSample
from tunecli.trainer.rollout import Rollout


def score_rollout(
    reward_fn: Callable[..., float],
    tokenizer: Any,
    prompts: list[PromptSample],
    rollout: Rollout,
    truncated_score: float | None,
) -> torch.Tensor:
    """Reward per sample, [N]. A reward that raises stops the run with the sample in the message.

    ``truncated_score`` (``reward.truncated_score``, when set) replaces the reward of responses cut at
    the length limit: an answer cut mid-way is not an answer, and crediting it lets the policy drift
    into rambling.
    """
    completions = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
    rewards = []
    for k, completion in enumerate(completions):
        if truncated_score is not None and not rollout.finished[k]:
            rewards.append(truncated_score)
            continue
        prompt = prompts[rollout.group_of(k)]
        rewards.append(reward_fn(prompt.text, completion, prompt.example.ground_truth, **prompt.example.extra))
    return torch.tensor(rewards, dtype=torch.float32)
