"""`tune new` without a terminal, `tune list`, `tune validate`, and start-up cost."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from recipe_testutil import files_in, flat, tune, tune_subprocess

from tunecli.config.io import load_recipe
from tunecli.config.header import read_script_header, recipe_sha256, split_script


def _header_matches(sh, y) -> bool:
    header, body = split_script(sh.read_bytes())
    return header == read_script_header(sh) and header.recipe_sha256 == recipe_sha256(body, y.read_bytes())


def test_flags_write_both_files(tmp_path):
    result = tune("new", "--model", "qwen2.5-3b", "--gpu-type", "a100-80g", "--gpus", "2", "--method", "lora",
                  "--algorithm", "dr_grpo", "--set", "actor.lr=2e-5", "--yes", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    name = "qwen2.5-3b_dr_grpo-lora_2_a100-80g_fsdp_vllm"
    assert files_in(tmp_path) == [f"{name}.sh", f"{name}.yaml"]
    r = load_recipe(tmp_path / f"{name}.yaml")
    assert r.model.path == "Qwen/Qwen2.5-3B-Instruct" and r.launch.strategy == "fsdp2"
    assert r.actor.lr == pytest.approx(2e-5) and r.algorithm.norm_adv_by_std_in_grpo is False
    assert r.actor.loss_agg_mode == "seq-mean-token-sum-norm"
    assert r.data.train_batch_size == 2 * 62  # the 3b card's 62 prompts per GPU, for 2 GPUs
    assert _header_matches(tmp_path / f"{name}.sh", tmp_path / f"{name}.yaml")


def test_dry_run_prints_both_files_and_writes_nothing(tmp_path):
    result = tune("new", "--preset", "quickstart-hf", "--yes", "--dry-run", "--out", tmp_path / "g")
    assert result.exit_code == 0, result.output
    assert "rollout:\n" in result.output and "exec tune train --config" in result.output
    assert "# tunecli-recipe: version=" in result.output
    assert not (tmp_path / "g").exists()


def test_answers_file_and_flags_override_it(tmp_path):
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump({
        "preset": "quickstart", "engine": "hf", "name": "from-answers",
        "set": {"rollout.n": 8, "trainer.total_training_steps": 5},
    }))
    result = tune("new", "--answers", answers, "--set", "actor.lr=3e-4", "--yes", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    r = load_recipe(tmp_path / "o" / "from-answers.yaml")
    assert (r.rollout.name, r.rollout.n, r.trainer.total_training_steps) == ("hf", 8, 5)
    assert r.actor.lr == pytest.approx(3e-4) and r.trainer.experiment_name == "from-answers"


def test_answers_file_out_and_an_explicit_out_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    answers = tmp_path / "answers.yaml"
    answers.write_text("preset: quickstart\nname: a\nout: from-answers\n")
    assert tune("new", "--answers", answers, "--yes").exit_code == 0
    assert files_in(tmp_path / "from-answers") == ["a.sh", "a.yaml"]
    result = tune("new", "--answers", answers, "--yes", "--out", tmp_path / "flag")
    assert result.exit_code == 0, result.output
    assert files_in(tmp_path / "flag") == ["a.sh", "a.yaml"]


@pytest.mark.parametrize("line, problem", [("set: 5", "its set: 5"), ("out: 12", "its out: 12")])
def test_answers_file_with_a_value_of_the_wrong_shape(tmp_path, line, problem):
    answers = tmp_path / "a.yaml"
    answers.write_text(f"preset: quickstart\n{line}\n")
    result = tune("new", "--answers", answers, "--yes", "--out", tmp_path / "o")
    assert result.exit_code == 1 and problem in flat(result.output) and "Fix:" in flat(result.output)
    assert files_in(tmp_path / "o") == []


def test_answers_file_with_unknown_key(tmp_path):
    answers = tmp_path / "a.yaml"
    answers.write_text("preset: quickstart\nmodle: qwen2.5-7b\n")
    result = tune("new", "--answers", answers, "--yes", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "did you mean 'model'" in flat(result.output)
    assert files_in(tmp_path / "o") == []


def test_custom_dataset_path_and_multi_process_cpu(tmp_path):
    data = tmp_path / "my data.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n')
    result = tune("new", "--preset", "quickstart", "--dataset", data, "--reward", "gsm8k_flexible", "--gpus", "2",
                  "--yes", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    (y,) = (tmp_path / "o").glob("*.yaml")
    r = load_recipe(y)
    assert (r.data.dataset, r.data.train_files, r.reward.function) == ("custom", str(data), "gsm8k_flexible")
    assert (r.launch.n_gpus_per_node, r.launch.strategy) == (2, "fsdp2")
    assert "torchrun" in y.with_suffix(".sh").read_text()


@pytest.mark.parametrize("args", [[], ["models"], ["hardware"], ["algorithms"], ["datasets"], ["rewards"]])
def test_list_fits_80_columns(args):
    result = tune("list", *args, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_new_help_fits_80_columns():
    result = tune("new", "--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for flag in ("--preset", "--model", "--algorithm", "--method", "--gpus", "--gpu-type", "--nodes", "--strategy",
                 "--engine", "--dataset", "--reward", "--name", "--out", "--set", "--answers", "--yes", "--dry-run",
                 "--force", "--launcher", "--from-verl"):
        assert flag in result.output


def test_list_filter_and_json():
    result = tune("list", "presets", "--filter", "7b", "--json")
    names = [p["name"] for p in json.loads(result.output)]
    assert names == ["qwen2.5-7b_grpo-lora_1_h100_fsdp_vllm", "qwen2-7b_grpo_2_h800_fsdp_vllm"]
    lora = json.loads(tune("list", "--filter", "lora", "--json").output)
    assert lora and all("lora" in json.dumps(p) for p in lora)
    assert tune("list", "modles").exit_code == 1


def test_validate_detects_edits_and_fix_hash(tmp_path):
    assert tune("new", "--preset", "quickstart", "--yes", "--out", tmp_path, "--name", "v").exit_code == 0
    y, sh = tmp_path / "v.yaml", tmp_path / "v.sh"
    assert tune("validate", y).exit_code == 0 and tune("validate", sh).exit_code == 0
    y.write_text(re.sub(r"\n  lr: \S+", "\n  lr: 0.0003", y.read_text()))
    result = tune("validate", sh)
    assert result.exit_code == 1 and "--fix-hash" in flat(result.output)
    assert tune("validate", "--fix-hash", y).exit_code == 0
    assert _header_matches(sh, y)
    y.write_text(y.read_text().replace("ppo_mini_batch_size: 4", "ppo_mini_batch_size: 8"))  # more than the 4 prompts a step
    result = tune("validate", "--fix-hash", y)
    assert result.exit_code == 1 and "actor.ppo_mini_batch_size = 8" in flat(result.output)
    assert not _header_matches(sh, y)  # not accepted while a check fails


def test_console_script_refuses_without_tty_and_stays_light(tmp_path):
    proc = tune_subprocess("new", "--preset", "quickstart", "--out", tmp_path / "o")
    assert proc.returncode == 1 and "--yes" in flat(proc.stderr)
    # `tune new` / `tune list` must not import torch or vllm (they must start fast)
    code = (
        "import sys\nfrom tunecli.cli import app\n"
        f"for argv in (['new','--preset','quickstart','--yes','--out',{str(tmp_path / 'p')!r}], ['list','models']):\n"
        "    try:\n        app(argv, standalone_mode=False)\n    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'vllm', 'transformers', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out, out


def test_gsm8k_file_keeps_gsm8k_loader_and_reward(gsm8k_dir, tmp_path):
    result = tune("new", "--dataset", gsm8k_dir / "train.jsonl", "--yes", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    (y,) = tmp_path.glob("*.yaml")
    r = load_recipe(y)
    assert (r.data.dataset, r.reward.function) == ("gsm8k", "gsm8k")
    assert r.data.val_files == str((gsm8k_dir / "test.jsonl").resolve())


def test_own_dataset_without_reward_asks_for_one(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n')
    result = tune("new", "--dataset", data, "--yes", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "--reward gsm8k_flexible" in flat(result.output)
    assert files_in(tmp_path / "o") == []


def test_out_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    result = tune("new", "--preset", "quickstart", "--yes", "--out", blocker)
    assert result.exit_code == 1 and "--out" in flat(result.output) and "Traceback" not in result.output
