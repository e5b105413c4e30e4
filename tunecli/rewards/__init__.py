"""Rewards: the built-in functions, the static check of ``reward.function`` and the one loader.

Below the trainer and the authoring layer alike: `tune new` checks a reward with ``reward_problems``
(reads, never runs), the trainer loads it with ``load_reward``.
"""

from tunecli.rewards.loader import RewardError, RewardFn, load_reward, reward_running
from tunecli.rewards.spec import BUILTIN_NAMES, parse_reward_spec, reward_menu, reward_problems

__all__ = ["BUILTIN_NAMES", "RewardError", "RewardFn", "load_reward", "parse_reward_spec", "reward_menu", "reward_problems", "reward_running"]
