"""Fault injection: a run killed with SIGKILL again and again (while it writes checkpoints, at random
moments of a step, while it starts) and resumed each time ends with exactly the weights of a run that
was never interrupted, and metrics.jsonl holds each step once.

The kill schedule comes from a fixed seed, so a failure reproduces; every attempt's output is kept in
``attempt_N.log`` under the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tunecli
from test_train_e2e import _env, final_weights, write_recipe

pytestmark = pytest.mark.slow

CODE_UNDER_TEST = str(Path(tunecli.__file__).resolve().parents[1])  # the tree this test imports, for the runs too
SEED = 20251202
STEPS = 8
MAX_CHECKPOINTS = 2
MAX_KILLS = 10
POLL_S = 0.002


def kill_schedule(seed: int, count: int, run_s: float) -> list[tuple[str, int, float]]:
    """(trigger, n, delay): 'write' kills ``delay`` s after the attempt's n-th checkpoint write began
    (0: the moment its .tmp-step_* directory appears); 'start' kills ``delay`` s after the process began,
    somewhere in a whole run's time ``run_s`` (mostly loading, on this machine)."""
    rng = random.Random(seed)
    schedule = []
    for _ in range(count):
        r = rng.random()
        if r < 0.45:
            schedule.append(("write", rng.randint(1, 2), 0.0))
        elif r < 0.85:
            schedule.append(("write", rng.randint(1, 2), rng.uniform(0.0, 0.3)))
        else:
            schedule.append(("start", 0, rng.uniform(0.1, 0.6) * run_s))
    return schedule


def _steps_saved(root: Path) -> int:
    return max((int(p.name.removeprefix("step_")) for p in root.glob("step_*")), default=0)


def _tmp_dirs(root: Path) -> set[str]:
    try:
        return {n for n in os.listdir(root) if n.startswith(".tmp-step_")}
    except FileNotFoundError:
        return set()


def _attempt(command: list[str], log: Path, root: Path, kill: tuple[str, int, float] | None) -> tuple[int | None, bool]:
    """Run one attempt; kill it when ``kill`` says. Returns (exit code or None if killed, killed mid-write)."""
    stale = _tmp_dirs(root)  # left by the previous kill: the trigger waits until the run has removed them
    env = {**_env(), "PYTHONPATH": os.pathsep.join(filter(None, [CODE_UNDER_TEST, os.environ.get("PYTHONPATH")]))}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        if kill is None:
            return proc.wait(timeout=300), False
        started, seen = time.monotonic(), set()
        while proc.poll() is None:
            trigger, n, delay = kill
            if trigger == "start" and time.monotonic() - started >= delay:
                break
            now = _tmp_dirs(root)
            stale &= now
            if trigger == "write" and not stale:
                seen |= now
                if len(seen) >= n:
                    time.sleep(delay)
                    break
            time.sleep(POLL_S)
        if proc.poll() is not None:
            return proc.wait(), False
        mid_write = bool(_tmp_dirs(root) - stale)
        proc.kill()  # SIGKILL
        proc.wait()
        return None, mid_write


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}/").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, value in enumerate(tree) for k, v in _flat(value, f"{prefix}{i}/").items()}
    return {prefix: tree}


def _records(run_dir: Path, key: str) -> list[dict]:
    """metrics.jsonl's training (key reward/mean) or validation (val/acc) records."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if key in r]


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_result(tmp_path, tiny_model_dir):
    import torch

    from tunecli.trainer import manifest

    recipe = {"trainer.total_training_steps": STEPS, "trainer.save_freq": 1, "trainer.test_freq": 3,
              "trainer.val_before_train": False, "trainer.max_checkpoints": MAX_CHECKPOINTS,
              "actor.lr_scheduler_type": "cosine", "actor.ppo_epochs": 1, "data.val_size": 2, "rollout.n": 2}

    def command(run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "tunecli.train", "--config", str(write_recipe(tmp_path, tiny_model_dir, run_dir, **recipe))]

    ref_dir, started = tmp_path / "reference", time.monotonic()
    code, _ = _attempt(command(ref_dir), tmp_path / "reference.log", ref_dir / "checkpoints", None)
    assert code == 0, (tmp_path / "reference.log").read_text()[-3000:]
    run_s = time.monotonic() - started

    run_dir = tmp_path / "killed"
    root = run_dir / "checkpoints"
    kills, mid_write = 0, 0
    for i, (trigger, n, delay) in enumerate(kill_schedule(SEED, MAX_KILLS, run_s)):
        kill = (trigger, min(n, max(1, STEPS - _steps_saved(root))), delay)  # a kill before the run can end
        log = tmp_path / f"attempt_{i}.log"
        code, during_write = _attempt(command(run_dir), log, root, kill)
        assert code in (None, 0), log.read_text()[-3000:]  # None: killed; 0: it finished before the kill came
        kills, mid_write = kills + (code is None), mid_write + during_write
        for ckpt in [p for p in root.glob("step_*") if (p / "manifest.json").is_file()] if root.is_dir() else []:
            assert manifest.verify(ckpt) is None, (i, kill, ckpt)  # a kill never damages a committed checkpoint
    code, _ = _attempt(command(run_dir), tmp_path / "attempt_last.log", root, None)  # runs to the end
    assert code == 0, (tmp_path / "attempt_last.log").read_text()[-3000:]
    # No temporary or set-aside directory is left, and only the newest trainer.max_checkpoints are kept.
    assert sorted(p.name for p in root.iterdir()) == [f"step_{s}" for s in range(STEPS - MAX_CHECKPOINTS + 1, STEPS + 1)]
    print(f"{kills} SIGKILLs, {mid_write} of them while a checkpoint was being written")
    assert kills >= 6 and mid_write >= 2, (kills, mid_write)

    name_ref, ref = final_weights(ref_dir)
    name_got, got = final_weights(run_dir)
    assert name_ref == name_got == f"step_{STEPS}"
    ref, got = _flat(ref), _flat(got)
    assert ref.keys() == got.keys()
    different = [k for k in ref if not (torch.equal(ref[k], got[k]) if isinstance(ref[k], torch.Tensor) else ref[k] == got[k])]
    assert not different, different[:5]  # weights and optimizer state, exactly

    # Each step once, in order, with the uninterrupted run's values; the validations too (every 3 steps, last).
    for key in ("reward/mean", "val/acc"):
        got_steps, ref_steps = [r["step"] for r in _records(run_dir, key)], [r["step"] for r in _records(ref_dir, key)]
        assert got_steps == ref_steps == (list(range(1, STEPS + 1)) if key == "reward/mean" else [3, 6, STEPS]), key
        assert [r[key] for r in _records(run_dir, key)] == [r[key] for r in _records(ref_dir, key)], key
