"""Drive the real `tune new` wizard through a pseudo-terminal, answering its prompts as a user."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import yaml

pexpect = pytest.importorskip("pexpect")

DOWN, UP, CLEAR = "\x1b[B", "\x1b[A", "\x15"  # arrow keys; Ctrl-U clears a text prompt's default
TUNABLES_LORA = [
    "data.train_batch_size", "rollout.n", "data.max_prompt_length", "data.max_response_length",
    "actor.ppo_mini_batch_size", "actor.ppo_micro_batch_size_per_gpu", "model.lora_rank", "model.lora_alpha",
    "actor.lr", "rollout.gpu_memory_utilization", "rollout.tensor_model_parallel_size", "actor.param_offload",
    "actor.optimizer_offload", "model.enable_gradient_checkpointing",
]


def spawn(*args: str):
    if shutil.which("tune") is None:
        pytest.skip("the tune console script is not installed")
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "LINES": "40", "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn("tune", ["new", *args], env=env, dimensions=(40, 120), encoding="utf-8", timeout=30)
    return child


def answer(child, prompt: str, keys: str) -> None:
    child.expect(re.escape(prompt))
    child.send(keys)


def finish(child) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def edit_tunables(child, edits: dict[str, str]) -> None:
    answer(child, "Edit these values?", "y")
    for key in TUNABLES_LORA:
        answer(child, key, (CLEAR + edits[key] + "\r") if key in edits else "\r")


def test_wizard_from_preset_with_edits(tmp_path):
    child = spawn("--out", str(tmp_path))
    answer(child, "Start from", "\r")  # default: quickstart
    answer(child, "Change the ingredients", "n")
    edit_tunables(child, {"data.train_batch_size": "16", "actor.lr": "5e-5"})
    answer(child, "Recipe name", CLEAR + "wizard-run\r")
    child.expect("peak per device")  # the summary with the memory estimate
    answer(child, "Write", "y")
    assert finish(child) == 0
    data = yaml.safe_load((tmp_path / "wizard-run.yaml").read_text())
    assert data["data"]["train_batch_size"] == 16 and data["actor"]["lr"] == pytest.approx(5e-5)
    assert data["model"]["path"] == "smollm2-135m" and data["rollout"]["name"] == "vllm"
    assert (tmp_path / "wizard-run.sh").is_file()


def test_wizard_from_scratch_picks_each_ingredient(tmp_path):
    child = spawn("--out", str(tmp_path))
    answer(child, "Start from", UP + "\r")  # (scratch) sits above the default
    answer(child, "Model", "\r")  # smollm2-135m
    answer(child, "Algorithm", DOWN + DOWN + "\r")  # grpo, dr_grpo, dapo
    answer(child, "Method", "\r")  # lora
    answer(child, "Hardware", "\r")  # cpu
    answer(child, "CPU processes per node", "\r")
    answer(child, "Nodes", "\r")
    answer(child, "Rollout engine", DOWN + "\r")  # hf
    answer(child, "Dataset", DOWN + "\r")  # countdown
    answer(child, "Reward", "\r")  # the dataset's default reward
    answer(child, "Edit these values?", "n")
    answer(child, "Recipe name", "\r")
    answer(child, "Write", "y")
    assert finish(child) == 0
    name = "smollm2-135m_dapo-lora_1_cpu_none_hf"
    data = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
    assert data["algorithm"]["name"] == "dapo" and data["actor"]["clip_ratio_high"] == pytest.approx(0.28)
    assert data["rollout"]["name"] == "hf"
    assert (data["data"]["dataset"], data["reward"]["function"]) == ("countdown", "countdown")


def test_wizard_shows_failed_check_and_lets_the_user_fix_it(tmp_path):
    child = spawn("--preset", "quickstart", "--out", str(tmp_path))
    answer(child, "Start from", "\r")
    answer(child, "Change the ingredients", "n")
    edit_tunables(child, {"actor.ppo_mini_batch_size": "5"})  # more than data.train_batch_size (4)
    answer(child, "Recipe name", "\r")
    child.expect("actor.ppo_mini_batch_size = 5")
    answer(child, "Edit the values and try again?", "y")
    edit_tunables(child, {"actor.ppo_mini_batch_size": "2"})
    answer(child, "Recipe name", "\r")
    answer(child, "Write", "y")
    assert finish(child) == 0
    (yaml_file,) = tmp_path.glob("*.yaml")
    assert yaml.safe_load(yaml_file.read_text())["actor"]["ppo_mini_batch_size"] == 2


def test_ctrl_c_writes_nothing(tmp_path):
    child = spawn("--out", str(tmp_path))
    answer(child, "Start from", "\r")
    answer(child, "Change the ingredients", "\x03")
    assert finish(child) == 1
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_wizard_confirms_an_imported_verl_script(tmp_path):
    card = os.path.join(os.path.dirname(__file__), "data", "verl", "qwen2-14b_grpo-lora_2_h100_fsdp_vllm.sh")
    child = spawn("--from-verl", card, "--out", str(tmp_path))
    child.expect("Not mapped from")
    answer(child, "Change the ingredients", "n")  # no "Start from": the script is the start
    answer(child, "Edit these values?", "n")
    answer(child, "Recipe name", "\r")
    answer(child, "Write", "y")
    assert finish(child) == 0
    data = yaml.safe_load((tmp_path / "qwen2.5-14b_grpo-lora_2_h100_fsdp_vllm.yaml").read_text())
    assert data["actor"]["ppo_micro_batch_size_per_gpu"] == 58


def test_wizard_asks_before_overwriting(tmp_path):
    from recipe_testutil import tune

    assert tune("new", "--preset", "quickstart", "--yes", "--out", tmp_path).exit_code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    child = spawn("--preset", "quickstart", "--set", "actor.lr=1e-3", "--out", str(tmp_path))
    answer(child, "Start from", "\r")
    answer(child, "Change the ingredients", "n")
    answer(child, "Edit these values?", "n")
    answer(child, "Recipe name", "\r")
    answer(child, "exist(s). Overwrite?", "n")
    assert finish(child) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
