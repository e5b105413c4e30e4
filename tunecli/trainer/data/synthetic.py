"""Seeded synthetic tasks: ``arithmetic`` and ``countdown``, each with a difficulty knob (1..5).

Train and held-out splits come from separate random streams and never share a question, so
validation accuracy measures generalisation, not recall. The same seed gives the same prompts.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tunecli.data.types import Example

# difficulty -> (operand range, operators, number of operands)
ARITHMETIC_LEVELS: dict[int, tuple[tuple[int, int], str, int]] = {
    1: ((0, 9), "+", 2),
    2: ((0, 20), "+-", 2),
    3: ((10, 99), "+-", 2),
    4: ((2, 99), "+-*", 2),
    5: ((10, 99), "+-*", 3),
}

# difficulty -> (how many numbers, their range, target range)
COUNTDOWN_LEVELS: dict[int, tuple[int, tuple[int, int]]] = {
    1: (2, (1, 20)),
    2: (3, (1, 20)),
    3: (3, (1, 50)),
    4: (4, (1, 50)),
    5: (4, (1, 100)),
}


def arithmetic_example(rng: random.Random, difficulty: int) -> Example:
    (lo, hi), ops, count = ARITHMETIC_LEVELS[difficulty]
    nums = [rng.randint(lo, hi) for _ in range(count)]
    chosen = [rng.choice(ops) for _ in range(count - 1)]
    # Subtraction keeps results non-negative at low difficulty (small models handle those best).
    if difficulty <= 3 and chosen == ["-"] and nums[0] < nums[1]:
        nums = [nums[1], nums[0]]
    expr = str(nums[0])
    for op, n in zip(chosen, nums[1:]):
        expr += f" {op} {n}"
    answer = eval(expr)  # noqa: S307 - built from our own integers and + - * only
    return Example(
        prompt=f"What is {expr}? Reply with only the number.",
        ground_truth=str(answer),
        extra={"expression": expr},
    )


def countdown_example(rng: random.Random, difficulty: int) -> Example:
    count, (lo, hi) = COUNTDOWN_LEVELS[difficulty]
    while True:
        nums = [rng.randint(lo, hi) for _ in range(count)]
        # The target is reachable by construction: combine the numbers in a random order.
        order = nums[:]
        rng.shuffle(order)
        target = order[0]
        for n in order[1:]:
            op = rng.choice("+-*" if target * n <= 1000 else "+-")
            target = target + n if op == "+" else target - n if op == "-" else target * n
        if target > 0:
            break
    listed = ", ".join(str(n) for n in nums)
    return Example(
        prompt=(
            f"Using the numbers [{listed}], create an equation that equals {target}. You can use + - * / "
            "and each number at most once. Show the final equation in <answer> </answer> tags, "
            "for example <answer>(1 + 2) / 3</answer>."
        ),
        ground_truth=str(target),
        extra={"numbers": nums, "target": target},
    )


GENERATORS: dict[str, Callable[[random.Random, int], Example]] = {
    "arithmetic": arithmetic_example,
    "countdown": countdown_example,
}


def generate_splits(name: str, difficulty: int, train_size: int, val_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out) for a synthetic task; held-out questions never appear in train."""
    make = GENERATORS[name]
    # The held-out split does not depend on the training seed: runs with different seeds are
    # compared on the same questions.
    val_rng = random.Random(f"{name}/{difficulty}/heldout")
    val: list[Example] = []
    seen: set[str] = set()
    for _ in range(val_size * 50):
        if len(val) == val_size:
            break
        ex = make(val_rng, difficulty)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            val.append(ex)
    train_rng = random.Random(f"{name}/{difficulty}/train/{seed}")
    train: list[Example] = []
    for _ in range(train_size * 50):
        if len(train) == train_size:
            break
        ex = make(train_rng, difficulty)
        if ex.prompt not in seen:  # repeats inside train are fine; leaks into held-out are not
            train.append(ex)
    return train, val
