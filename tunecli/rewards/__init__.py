"""Rewards: the built-in functions, the static check of ``reward.function`` and the one loader.

Below the trainer and the authoring layer alike: `tune new` checks a reward with ``reward_problems``
(reads, never runs), the trainer loads them with ``load_rewards``.
"""

from tunecli.rewards.combined import RewardSet, Scored, load_rewards
from tunecli.rewards.loader import Reward, RewardError, RewardFn, RewardInput, load_reward, reward_running
from tunecli.rewards.spec import BUILTIN_NAMES, parse_reward_spec, reward_menu, reward_problems

__all__ = [
    "BUILTIN_NAMES", "Reward", "RewardError", "RewardFn", "RewardInput", "RewardSet", "Scored", "load_reward",
    "load_rewards", "parse_reward_spec", "reward_menu", "reward_problems", "reward_running",
]
