"""Scoring a rollout: one reward per sample, from the recipe's reward function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tunecli.rewards import RewardFn, load_reward
from tunecli.trainer.data import PromptSample
from tunecli.trainer.rollout import Rollout
from tunecli.trainer.stopping import StopRequested, StopRules


def recipe_reward(reward: Any) -> RewardFn:
    """The recipe's ``reward`` section as one callable: reward.function with its kwargs, each call
    limited to reward.timeout_s."""
    return load_reward(reward.function, format_pattern=reward.format_pattern, timeout_s=reward.timeout_s, **reward.kwargs)


def score_rollout(
    reward_fn: Callable[..., float],
    tokenizer: Any,
    prompts: list[PromptSample],
    rollout: Rollout,
    truncated_score: float | None,
    stop: StopRules,
) -> torch.Tensor | None:
    """Reward per sample, [N]; None when a stop request abandoned the scoring. A reward that raises,
    overruns reward.timeout_s or returns a non-finite number stops the run with the sample in the message.

    ``truncated_score`` (``reward.truncated_score``, when set) replaces the reward of responses cut at
    the length limit: an answer cut mid-way is not an answer, and crediting it lets the policy drift
    into rambling.
    """
    completions = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
    rewards = []
    try:
        for k, completion in enumerate(completions):
            if stop.requested:  # asked to stop: the next call could be the one that hangs
                return None
            if truncated_score is not None and not rollout.finished[k]:
                rewards.append(truncated_score)
                continue
            prompt = prompts[rollout.group_of(k)]
            rewards.append(reward_fn(prompt.text, completion, prompt.example.ground_truth, **prompt.example.extra))
    except StopRequested:  # Ctrl-C inside a reward call
        return None
    except KeyboardInterrupt:
        if stop.requested:  # the second Ctrl-C: quit now
            raise
        stop.request()  # raised by the reward's own code: a stop, as a Ctrl-C asks for
        return None
    return torch.tensor(rewards, dtype=torch.float32)


def accuracy_counts(rewards: torch.Tensor | None) -> torch.Tensor:
    """[correct, samples, reward sum, abandoned] of one rank's held-out rewards, to sum over ranks: a
    sample is correct when its reward is >= 1; ``rewards`` None (abandoned by a stop request) counts 1."""
    if rewards is None:
        return torch.tensor([0.0, 0.0, 0.0, 1.0])
    return torch.tensor([float((rewards >= 1.0).sum()), float(len(rewards)), float(rewards.sum()), 0.0])
