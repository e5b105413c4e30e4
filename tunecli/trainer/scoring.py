"""Scoring a rollout: the recipe's rewards on every sample, their weighted total and each one's mean."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunecli.rewards import RewardInput, RewardSet, load_rewards
from tunecli.trainer.data import PromptSample
from tunecli.trainer.rollout import Rollout
from tunecli.trainer.stopping import StopRequested, StopRules


def recipe_rewards(reward: Any) -> RewardSet:
    """The recipe's ``reward`` section: reward.functions (else reward.function) with reward.weights and
    kwargs, each call limited to reward.timeout_s."""
    return load_rewards(reward.function_list(), reward.weights, format_pattern=reward.format_pattern,
                        timeout_s=reward.timeout_s, kwargs=reward.kwargs)


@dataclass
class Scores:
    """A rollout's rewards: the weighted total per sample [N], each function's values, the texts scored."""

    total: torch.Tensor  # [N]
    per_reward: dict[str, list[float | None]]
    completions: list[str]
    seconds: float

    def metrics(self) -> dict[str, float]:
        """reward/NAME (each function's mean over the samples it applied to) and timing/reward_s."""
        out = {}
        for name, values in self.per_reward.items():
            applied = [v for v in values if v is not None]
            out[f"reward/{name}"] = sum(applied) / len(applied) if applied else 0.0
        out["timing/reward_s"] = self.seconds
        return out


def reward_inputs(prompts: list[PromptSample], rollout: Rollout, completions: list[str]) -> list[RewardInput]:
    out = []
    for k, completion in enumerate(completions):
        example = prompts[rollout.group_of(k)].example
        messages = example.prompt if isinstance(example.prompt, list) else None
        raw = example.prompt if isinstance(example.prompt, str) else None
        out.append(RewardInput(prompts[rollout.group_of(k)].text, completion, example.ground_truth,
                               dict(example.extra), messages=messages, raw_prompt=raw))
    return out


def score_rollout(
    rewards: RewardSet,
    tokenizer: Any,
    prompts: list[PromptSample],
    rollout: Rollout,
    truncated_score: float | None,
    stop: StopRules,
) -> Scores | None:
    """The rollout's rewards; None when a stop request abandoned the scoring. A reward that raises,
    overruns reward.timeout_s or returns a non-finite number stops the run with the sample in the message.

    ``truncated_score`` (``reward.truncated_score``, when set) replaces the reward of responses cut at
    the length limit: an answer cut mid-way is not an answer, and crediting it lets the policy drift
    into rambling. No reward function sees those responses.
    """
    completions = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
    inputs = reward_inputs(prompts, rollout, completions)
    scored_at = [k for k in range(len(inputs)) if truncated_score is None or rollout.finished[k]]
    try:
        scored = rewards.score([inputs[k] for k in scored_at], lambda: stop.requested)
    except StopRequested:  # Ctrl-C inside a reward call
        return None
    except KeyboardInterrupt:
        if stop.requested:  # the second Ctrl-C: quit now
            raise
        stop.request()  # raised by the reward's own code: a stop, as a Ctrl-C asks for
        return None
    if scored is None:
        return None
    total = [truncated_score] * len(inputs)
    per_reward: dict[str, list[float | None]] = {name: [None] * len(inputs) for name in scored.per_reward}
    for i, k in enumerate(scored_at):
        total[k] = scored.total[i]
        for name, values in scored.per_reward.items():
            per_reward[name][k] = values[i]
    return Scores(torch.tensor(total, dtype=torch.float32), per_reward, completions, scored.seconds)


def accuracy_counts(scores: Scores | None, empty: bool = False) -> torch.Tensor:
    """[correct, samples, reward sum, abandoned] of one rank's held-out rewards, to sum over ranks: a
    sample is correct when its reward is >= 1; ``scores`` None (abandoned by a stop request) counts 1,
    unless the rank had no prompts at all (``empty``)."""
    if empty:
        return torch.zeros(4)
    if scores is None:
        return torch.tensor([0.0, 0.0, 0.0, 1.0])
    rewards = scores.total
    return torch.tensor([float((rewards >= 1.0).sum()), float(len(rewards)), float(rewards.sum()), 0.0])


def completion_rows(scores: Scores, prompts: list[PromptSample], rollout: Rollout, advantages: torch.Tensor,
                    count: int) -> list[dict[str, Any]]:
    """The first ``count`` samples of this rank's step for trainer.log_completions: prompt, completion,
    the weighted reward, each function's value and the advantage."""
    rows = []
    for k in range(min(count, len(scores.completions))):
        rows.append({
            "prompt": prompts[rollout.group_of(k)].text, "completion": scores.completions[k],
            "reward": float(scores.total[k]), "advantage": float(advantages[k]),
            "rewards": {name: values[k] for name, values in scores.per_reward.items()},
        })
    return rows
