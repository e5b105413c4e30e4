"""`tune eval`: a checkpoint scores exactly what the trainer's validation reported for that step, and
`--baseline` scores the base model as the trainer's step-0 validation did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.recipe_testutil import flat, tune

# Partial credit for length, full credit for a digit: accuracy and mean reward both vary on random weights.
REWARD_PY = """
def digits(prompt, completion, ground_truth, **kwargs):
    return 1.0 if any(c.isdigit() for c in completion) else min(len(completion), 30) / 30.0
"""


def _train(tmp: Path, model_dir: Path) -> tuple[Path, Path]:
    (tmp / "reward.py").write_text(REWARD_PY)
    recipe = {
        "name": "evaltest",
        "model": {"path": str(model_dir), "lora_rank": 4, "lora_alpha": 8},
        "data": {"dataset": "arithmetic", "difficulty": 2, "train_size": 16, "val_size": 6,
                 "train_batch_size": 2, "max_response_length": 6},
        "reward": {"function": f"{tmp / 'reward.py'}:digits"},
        "actor": {"ppo_mini_batch_size": 1, "ppo_micro_batch_size_per_gpu": 4, "lr": 5e-2},
        "rollout": {"name": "hf", "n": 4},
        "trainer": {"total_training_steps": 2, "save_freq": 1, "test_freq": 1, "num_threads": 1, "seed": 5,
                    "default_local_dir": str(tmp / "run")},
    }
    config = tmp / "evaltest.yaml"
    config.write_text(yaml.safe_dump(recipe))
    done = subprocess.run([sys.executable, "-m", "tunecli.train", "--config", str(config)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return config, tmp / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    return _train(tmp_path_factory.mktemp("eval"), tiny_model_dir)


def _validation(run_dir: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "val/acc" in r}


def _eval_json(*args) -> dict:
    result = tune("eval", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_eval_of_a_run_equals_the_trainers_validation_and_baseline_equals_step_0(trained):
    config, run_dir = trained
    val = _validation(run_dir)
    assert val[2]["val/reward"] != val[0]["val/reward"]  # training moved the model: the comparison can fail
    report = _eval_json(str(run_dir), "--baseline")
    base, final = report["results"]
    assert (final["greedy_acc"], final["greedy_reward"]) == pytest.approx((val[2]["val/acc"], val[2]["val/reward"]), abs=1e-6)
    assert (base["greedy_acc"], base["greedy_reward"]) == pytest.approx((val[0]["val/acc"], val[0]["val/reward"]), abs=1e-6)
    assert report["difference"]["greedy_reward"] == pytest.approx(final["greedy_reward"] - base["greedy_reward"], abs=1e-6)
    assert final["questions"] == base["questions"] == 6


@pytest.mark.slow
def test_eval_of_an_older_checkpoint_with_samples_and_table(trained):
    config, run_dir = trained
    val = _validation(run_dir)
    step1 = run_dir / "checkpoints" / "step_1"
    report = _eval_json(str(step1), "--config", str(config), "--samples", "3")
    (row,) = report["results"]
    assert row["greedy_reward"] == pytest.approx(val[1]["val/reward"], abs=1e-6)
    assert 0.0 <= row["mean@3"] <= row["pass@3"] <= 1.0
    table = tune("eval", str(run_dir), "--baseline", "--limit", "3")
    assert table.exit_code == 0, table.output
    text = flat(table.output)
    assert "difference" in text and "held-out greedy accuracy:" in text and "on 3 questions" in text


def test_eval_refusals_are_one_paragraph(tmp_path, tiny_model_dir):
    no_recipe = tune("eval", str(tiny_model_dir))
    assert no_recipe.exit_code == 1 and "--config NAME.yaml" in flat(no_recipe.output)
    (tmp_path / "checkpoints").mkdir()
    empty_run = tune("eval", str(tmp_path))
    assert empty_run.exit_code == 1 and "no finished checkpoint" in flat(empty_run.output)
    bad_engine = tune("eval", str(tiny_model_dir), "--engine", "foo", "--data", "arithmetic")
    assert bad_engine.exit_code == 1 and "--engine = 'foo'" in flat(bad_engine.output)
    assert "Traceback" not in no_recipe.output + empty_run.output + bad_engine.output


@pytest.mark.slow
def test_eval_of_the_merged_export_matches_the_run(trained, tmp_path):
    config, run_dir = trained
    exported = tune("export", str(run_dir), "--what", "merged", "--out", str(tmp_path / "out"))
    assert exported.exit_code == 0, exported.output
    from_export = _eval_json(str(tmp_path / "out" / "merged"), "--config", str(config))["results"][0]
    from_run = _eval_json(str(run_dir), "--config", str(config))["results"][0]
    assert from_export["questions"] == from_run["questions"] == 6
    assert from_export["greedy_reward"] == pytest.approx(from_run["greedy_reward"], abs=1e-6)


@pytest.mark.slow
def test_eval_of_a_model_directory_and_a_catalogue_model_on_given_data(tmp_path, tiny_model_dir):
    rows = tmp_path / "held.jsonl"
    rows.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(5)))
    (tmp_path / "reward.py").write_text(REWARD_PY)
    reward = f"{tmp_path / 'reward.py'}:digits"
    (row,) = _eval_json(str(tiny_model_dir), "--data", str(rows), "--reward", reward, "--engine", "hf")["results"]
    assert row["questions"] == 5 and row["model"] == str(tiny_model_dir)
    (row,) = _eval_json("smollm2-135m", "--data", "arithmetic", "--limit", "2", "--engine", "hf")["results"]
    assert row["questions"] == 2 and 0.0 <= row["greedy_acc"] <= 1.0


@pytest.mark.slow
@pytest.mark.vllm
def test_eval_baseline_on_one_vllm_engine_equals_two_separate_evaluations(tmp_path_factory):
    """`--baseline --engine vllm` scores the base on the engine as it started, then pushes the trained
    weights into it: each number must equal the one a separate engine gives."""
    pytest.importorskip("vllm")
    from tests.conftest import make_tiny_model

    tmp = tmp_path_factory.mktemp("eval-vllm")
    model_dir = make_tiny_model(tmp / "tiny", hidden=128)  # head_dim 32: vLLM's CPU attention needs >= 32
    config, run_dir = _train(tmp, model_dir)
    (trained,) = _eval_json(str(run_dir), "--engine", "vllm")["results"]
    (base,) = _eval_json(str(model_dir), "--config", str(config), "--engine", "vllm")["results"]
    assert base["greedy_reward"] != trained["greedy_reward"]  # a missed push, or the wrong order, would show
    pair = _eval_json(str(run_dir), "--engine", "vllm", "--baseline")["results"]
    for shared, alone in zip(pair, (base, trained), strict=True):
        assert (shared["greedy_acc"], shared["greedy_reward"]) == pytest.approx((alone["greedy_acc"], alone["greedy_reward"]), abs=1e-6)
