"""Critic-free policy-gradient algorithms: a registry of named algorithms and their math.

This package's top level is torch-free (``tune new`` / ``tune list`` import it and must start fast):

  registry   AlgorithmSpec, register_algorithm / get_algorithm / algorithm_names, the estimator and
             loss registries and their decorators, the LossAggMode / KLType literals
  specs      the shipped algorithms: grpo, dr_grpo, dapo, rloo, gspo, reinforce_plus_plus,
             reinforce_plus_plus_baseline, gpg, grpo_passk

The tensor code is imported by the trainer directly: ``core`` (masked means, aggregation, KL,
log-probs), ``advantages`` (``compute_advantages``), ``losses`` (``policy_loss``).
"""

from tunecli.algorithms import specs as _specs  # noqa: F401  registers the shipped algorithms
from tunecli.algorithms.registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    AlgorithmSpec,
    KLType,
    LossAggMode,
    algorithm_names,
    get_algorithm,
    register_advantage,
    register_algorithm,
    register_policy_loss,
    unknown_algorithm_message,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "AlgorithmSpec",
    "KLType",
    "LossAggMode",
    "algorithm_names",
    "get_algorithm",
    "register_advantage",
    "register_algorithm",
    "register_policy_loss",
    "unknown_algorithm_message",
]
