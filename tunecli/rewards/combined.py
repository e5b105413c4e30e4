"""Several rewards with weights: ``reward.functions`` and ``reward.weights``, as TRL adds them up.

The total of a sample is the weighted sum of the rewards that apply to it (a TRL function's None
leaves it out, as TRL does); each reward's own values are kept to be logged as ``reward/NAME``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunecli.rewards.loader import Reward, RewardInput, load_reward

# the trainer's own reward/* metrics: a function of that name is logged as NAME_fn instead
RESERVED = ("mean", "std", "acc")


@dataclass
class Scored:
    """One batch's rewards: the weighted total per sample, each function's values, the seconds spent."""

    total: list[float]
    per_reward: dict[str, list[float | None]]
    seconds: float


class RewardSet:
    def __init__(self, rewards: list[Reward], weights: list[float]):
        self.rewards, self.weights = rewards, weights
        self.names = _unique_names([r.name for r in rewards])

    def score(self, samples: list[RewardInput], stop_requested: Callable[[], bool] = lambda: False) -> Scored | None:
        """Every function on every sample; None when a stop request came between two calls."""
        start = time.perf_counter()
        per_reward: dict[str, list[float | None]] = {}
        for name, reward in zip(self.names, self.rewards):
            values = reward.score(samples, stop_requested)
            if values is None:
                return None
            per_reward[name] = values
        total = [
            sum(w * v[k] for w, v in zip(self.weights, per_reward.values()) if v[k] is not None)
            for k in range(len(samples))
        ]
        return Scored([float(t) for t in total], per_reward, time.perf_counter() - start)


def load_rewards(
    functions: list[str], weights: list[float] | None, *, format_pattern: str | None = None,
    timeout_s: float | None = None, kwargs: dict[str, Any] | None = None,
) -> RewardSet:
    """The recipe's reward functions, each with the recipe's ``reward.kwargs``; weights default to 1 each."""
    rewards = [load_reward(text, format_pattern=format_pattern, timeout_s=timeout_s, **(kwargs or {})) for text in functions]
    return RewardSet(rewards, list(weights) if weights is not None else [1.0] * len(rewards))


def _unique_names(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        name = f"{name}_fn" if name in RESERVED else name
        unique, k = name, 2
        while unique in out:
            unique, k = f"{name}_{k}", k + 1
        out.append(unique)
    return out
