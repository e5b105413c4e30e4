"""Rules about a recipe that `tune new` / `tune validate` check and the trainer enforces again at start.

Each rule is written once here. The authoring checks call them with the recipe's own process count;
the trainer calls them with the number of processes that actually started (``tune train`` runs one
process of a recipe written for several).
"""

from __future__ import annotations

from tunecli.algorithms import get_algorithm
from tunecli.config.schema import Recipe
from tunecli.errors import TuneError, field_error


def batch_problems(recipe: Recipe, world: int, warnings: list[str] | None = None) -> list[TuneError]:
    """Batch sizes that do not split into whole groups, mini-batches, micro-batches and processes, and
    the algorithm's own rules (e.g. RLOO's rollout.n >= 2)."""
    algorithm = get_algorithm(recipe.algorithm.name)
    problems = _divisibility(recipe, world) + algorithm.problems(recipe)
    if world > 1 and recipe.launch.strategy == "none":
        problems.append(field_error("launch.strategy", "none", f"{world} processes need a sharding strategy (with "
                                    "'none' their gradients would never meet)", "use --strategy fsdp2, or --gpus 1 --nodes 1."))
    if recipe.rollout.n == 1 and algorithm.grouped and algorithm.min_group_size == 1 and warnings is not None:
        warnings.append(f"rollout.n = 1: each {algorithm.name} group has one member, so the advantage is the raw reward.")
    return problems


def _divisibility(recipe: Recipe, world: int) -> list[TuneError]:
    batch, n = recipe.data.train_batch_size, recipe.rollout.n
    mini, micro = recipe.actor.ppo_mini_batch_size, recipe.actor.ppo_micro_batch_size_per_gpu
    problems = []
    if batch % world:
        problems.append(field_error("data.train_batch_size", batch, f"prompts per step must split evenly over the {world} "
                                    "data-parallel processes (each keeps whole GRPO groups)",
                                    f"use a multiple of {world}, e.g. {max(world, batch // world * world)}."))
    if mini > batch:
        problems.append(field_error("actor.ppo_mini_batch_size", mini, f"larger than data.train_batch_size ({batch})",
                                    f"set it to {batch} (one update per step) or a divisor of {batch}."))
    elif batch % mini:
        problems.append(field_error("actor.ppo_mini_batch_size", mini, f"does not divide data.train_batch_size ({batch}), "
                                    "so the last mini-batch would be short", f"use a divisor of {batch}, e.g. {batch}."))
    elif mini % world:
        problems.append(field_error("actor.ppo_mini_batch_size", mini, f"each of the {world} processes must get whole "
                                    "prompt groups of every mini-batch", f"use a multiple of {world}."))
    elif recipe.actor.ppo_max_token_len_per_gpu is None:
        per_rank = mini * n // world
        if per_rank % micro:
            divisors = [d for d in range(1, per_rank + 1) if per_rank % d == 0 and d <= micro]
            problems.append(field_error("actor.ppo_micro_batch_size_per_gpu", micro, f"each process gets {per_rank} "
                                        f"samples per mini-batch (ppo_mini_batch_size {mini} x rollout.n {n} / {world} "
                                        "processes), which is not a whole number of micro-batches",
                                        f"use a divisor of {per_rank}, e.g. {max(divisors)}."))
    return problems
