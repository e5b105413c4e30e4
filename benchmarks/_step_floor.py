"""How fast could a run's step be on this machine? Its rollout and weight sync as measured (the engine's
work), plus its training FLOPs at 100% of the matmul peak: no trainer makes the step shorter than that
with the same engine. ``limits.py --metrics RUN_DIR`` prints it, and the best ratio to TRL it allows when
the run lies in a ``compare_trl.py`` work directory."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path


@dataclass
class StepFloor:
    """The fastest a run's step could be on this machine with its rollout engine, median over its steps."""

    floor_s: float  # rollout + weight sync as measured, plus the training FLOPs at 100% of the matmul peak
    no_sync_s: float  # the same without any weight sync
    step_s: float  # the run's own median step
    rollout_s: float
    sync_s: float
    train_at_peak_s: float


def step_floor(fields: list, train_flops: list[float], peak_flops: float) -> StepFloor:
    """Per step (``_common.StepFields`` and its training FLOPs): the rollout and the weight sync as the
    run measured them (the engine's work), plus the training FLOPs at ``peak_flops``. Medians over the
    steps: the floors' median, and each part's on its own."""
    rollout = [f.rollout_s for f in fields]
    sync = [f.sync_s for f in fields]
    train = [flops / peak_flops for flops in train_flops]
    med = statistics.median
    return StepFloor(
        floor_s=med(r + s + t for r, s, t in zip(rollout, sync, train)),
        no_sync_s=med(r + t for r, t in zip(rollout, train)),
        step_s=med(f.step_s for f in fields),
        rollout_s=med(rollout),
        sync_s=med(sync),
        train_at_peak_s=med(train),
    )


def trl_median_step(run_dir: Path, warmup: int = 1) -> float | None:
    """TRL's median step from compare_trl.py's ``trl-*.json`` beside ``run_dir`` (its --workdir), after
    each run's warm-up steps, pooled as compare_trl pools them; None when the run has no TRL beside it."""
    steps = []
    for result in sorted(Path(run_dir).parent.glob("trl-*.json")):
        steps += json.loads(result.read_text())["step_s"][warmup:]
    return statistics.median(steps) if steps else None


def needed_training_fraction(floor: StepFloor, trl_step_s: float, ratio: float) -> float:
    """The share of the matmul peak the training phase would need for a step ``ratio`` times shorter than
    TRL's, with the run's rollout and sync as they are; inf when those alone leave no time for it."""
    budget = trl_step_s / ratio - floor.rollout_s - floor.sync_s
    return floor.train_at_peak_s / budget if budget > 0 else float("inf")


def print_step_floor(floor: StepFloor, peak_name: str, trl_step_s: float | None, goal_ratio: float = 7.0) -> None:
    print(
        f"  step floor (rollout {floor.rollout_s:.2f} s + sync {floor.sync_s:.2f} s as measured, training at 100% of the "
        f"{peak_name} peak {floor.train_at_peak_s:.2f} s): {floor.floor_s:.2f} s, {floor.no_sync_s:.2f} s with no sync "
        f"(medians); the run's median step {floor.step_s:.2f} s"
    )
    if trl_step_s is not None:
        print(
            f"  against TRL's median step {trl_step_s:.2f} s (trl-*.json beside the run): this run {trl_step_s / floor.step_s:.2f}x; "
            f"at most {trl_step_s / floor.floor_s:.2f}x with this rollout, {trl_step_s / floor.no_sync_s:.2f}x with no sync either"
        )
        needed = needed_training_fraction(floor, trl_step_s, goal_ratio)
        print(
            f"  a {goal_ratio:g}x step would need the training phase at {needed:.0%} of the {peak_name} peak with this rollout and sync"
            if needed != float("inf") else f"  a {goal_ratio:g}x step is out of reach: this rollout and sync alone take longer"
        )
