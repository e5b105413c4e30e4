"""One training step (tiny random Llama, HF engine) with each reward contract, a weighted pair, and the
trackers read back offline through their own readers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

TRL_PY = '''
def length_bonus(prompts, completions, ground_truth, **kwargs):
    assert isinstance(prompts, list) and len(prompts) == len(completions) == len(ground_truth)
    assert all(isinstance(c, str) for c in completions)
    # None: "does not apply" (TRL) for every other sample
    return [None if k % 2 else 0.25 for k, c in enumerate(completions)]
'''
VERL_PY = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    assert isinstance(solution_str, str) and isinstance(extra_info, dict) and "expression" in extra_info
    return {"score": 0.5, "acc": False}
'''
TUNECLI_PY = '''
def constant(prompt, completion, ground_truth, **kwargs):
    return 1.0
'''


def write_recipe(tmp: Path, model_dir: Path, reward: dict, **trainer) -> Path:
    recipe = {
        "name": "tiny",
        "model": {"path": str(model_dir), "lora_rank": 4, "lora_alpha": 8},
        "data": {"dataset": "arithmetic", "difficulty": 1, "train_size": 4, "val_size": 2, "train_batch_size": 2,
                 "max_response_length": 4},
        "reward": reward,
        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 4, "lr": 1e-3},
        "rollout": {"n": 2, "name": "hf"},
        "trainer": {"total_training_steps": 1, "save_freq": -1, "test_freq": -1, "val_before_train": False,
                    "default_local_dir": str(tmp / "run"), "num_threads": 1, "seed": 1, **trainer},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def train(config: Path) -> int:
    from tunecli.train import train as run

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run(str(config), [], command=["python", "-m", "tunecli.train", "--config", str(config)])
    finally:  # the trainer's Ctrl-C handler must not outlive the run in this test process
        for s, handler in handlers.items():
            signal.signal(s, handler)


def step_metrics(tmp: Path) -> dict:
    lines = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return next(m for m in lines if "reward/mean" in m)


@pytest.mark.slow
def test_one_step_with_trl_verl_and_tunecli_rewards_weighted(tmp_path, tiny_model_dir):
    for name, text in (("trl.py", TRL_PY), ("verl.py", VERL_PY), ("mine.py", TUNECLI_PY)):
        (tmp_path / name).write_text(text)
    functions = [f"{tmp_path}/trl.py:length_bonus", f"{tmp_path}/verl.py:compute_score", f"{tmp_path}/mine.py:constant"]
    config = write_recipe(tmp_path, tiny_model_dir, {"functions": functions, "weights": [2.0, 1.0, 0.5]},
                          log_completions=3)
    assert train(config) == 0
    m = step_metrics(tmp_path)
    assert m["reward/length_bonus"] == 0.25  # the mean over the samples it applied to
    assert m["reward/compute_score"] == 0.5 and m["reward/constant"] == 1.0
    # samples 0, 2: 2*0.25 + 0.5 + 0.5 = 1.5; samples 1, 3 (None): 0.5 + 0.5 = 1.0
    assert m["reward/mean"] == pytest.approx(1.25)
    assert m["timing/reward_s"] >= 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and [r["reward"] for r in rows] == [1.5, 1.0, 1.5]
    assert {"prompt", "completion", "advantage", "step"} <= set(rows[0]) and rows[0]["step"] == 1
    assert rows[1]["rewards"] == {"length_bonus": None, "compute_score": 0.5, "constant": 1.0}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["train_reward_last"] == pytest.approx(1.25)
    assert summary["units"]["mean_step_s"] == "s" and isinstance(summary["mean_step_s"], float)
