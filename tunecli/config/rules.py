"""Rules about a recipe that `tune new` / `tune validate` check and the trainer enforces again at start.

Each rule is written once here. The authoring checks call them with the recipe's own process count;
the trainer calls them with the number of processes that actually started (``tune train`` runs one
process of a recipe written for several).
"""

from __future__ import annotations

import math

from tunecli.algorithms import get_algorithm
from tunecli.config.schema import Recipe
from tunecli.errors import TuneError, field_error


def batch_problems(recipe: Recipe, world: int, warnings: list[str] | None = None) -> list[TuneError]:
    """Batch sizes whose prompts or mini-batch samples do not split over the processes, and the
    algorithm's own rules (e.g. RLOO's rollout.n >= 2)."""
    algorithm = get_algorithm(recipe.algorithm.name)
    problems = _divisibility(recipe, world) + algorithm.problems(recipe)
    if world > 1 and recipe.launch.strategy == "none":
        problems.append(field_error("launch.strategy", "none", f"{world} processes need a sharding strategy (with "
                                    "'none' their gradients would never meet)", "use --strategy fsdp2, or --gpus 1 --nodes 1."))
    if warnings is not None:
        warnings.extend(batch_notes(recipe))
    if recipe.rollout.n == 1 and algorithm.grouped and algorithm.min_group_size == 1 and warnings is not None:
        warnings.append(f"rollout.n = 1: each {algorithm.name} group has one member, so the advantage is the raw reward.")
    return problems


def _divisibility(recipe: Recipe, world: int) -> list[TuneError]:
    batch, n = recipe.data.train_batch_size, recipe.rollout.n
    mini = recipe.actor.ppo_mini_batch_size
    problems = []
    if batch % world:
        problems.append(field_error("data.train_batch_size", batch, f"prompts per step must split evenly over the {world} "
                                    "data-parallel processes (each keeps whole GRPO groups)",
                                    f"use a multiple of {world}, e.g. {max(world, batch // world * world)}."))
    if mini > batch:
        problems.append(field_error("actor.ppo_mini_batch_size", mini, f"larger than data.train_batch_size ({batch})",
                                    f"set it to {batch} (one update per step) or a divisor of {batch}."))
    elif (mini * n) % world:
        # As verl: a mini-batch's samples (not its prompts) are split over the data-parallel processes.
        fitted = mini_batch_that_splits(mini, n, world, batch)
        fix = f"use a multiple of {world // math.gcd(n, world)}" + (f", e.g. {fitted}." if fitted else
                                                                     f" up to data.train_batch_size ({batch}), or fewer processes.")
        problems.append(field_error("actor.ppo_mini_batch_size", mini, f"a mini-batch holds {mini} prompts x rollout.n "
                                    f"{n} = {mini * n} samples, which do not split evenly over the {world} processes", fix))
    return problems


def mini_batch_that_splits(mini: int, n: int, world: int, batch: int) -> int | None:
    """The smallest ppo_mini_batch_size >= ``mini`` whose samples split over ``world`` processes (None
    when that exceeds data.train_batch_size)."""
    step = world // math.gcd(n, world)
    fitted = -(-mini // step) * step
    return fitted if fitted <= batch else None


def batch_notes(recipe: Recipe) -> list[str]:
    """What the batch sizes do that is allowed but worth saying (verl does the same)."""
    batch, mini = recipe.data.train_batch_size, recipe.actor.ppo_mini_batch_size
    if mini < batch and batch % mini:
        return [f"actor.ppo_mini_batch_size = {mini} does not divide data.train_batch_size ({batch}): the last "
                f"mini-batch of each step holds {batch % mini} prompts (verl does the same)."]
    return []
