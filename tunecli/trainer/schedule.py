"""The learning-rate schedule: linear warmup, then constant or cosine to the run's last step."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_lambda(warmup: int, total: int, kind: str) -> Callable[[int], float]:
    """The LR factor of training step ``step`` (stepped once per training step, as verl does)."""

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return lr_factor
