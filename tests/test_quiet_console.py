"""The console of a real run holds the product's lines only; `--verbose` brings the libraries' back.

A 2-step quickstart-like run (vllm engine, bf16 rollouts of a float32 model: what made vLLM warn once
per tensor) through `tune train`, its stdout and stderr sent to a pipe as under SLURM or nohup.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_tiny_model

# Every line the product itself prints during a run; anything else is a library talking.
PRODUCT_LINES = [
    r"validation @ step \d+: held-out accuracy",
    r"step \d+/\d+ reward ",
    r"^compute dtype (bfloat16|float32) \(auto: ",  # what actor.compute_dtype auto chose, once
    r"GRPO( run summary|\s)",
    r"[┏┃┡│└┌├╭╰━─╇]",  # the summary table
    r"^\s*$",
]
LIBRARY_MARKS = ["WARNING", "Warning", "it/s]", "Attempted to load weight", "LD_PRELOAD", "Triton"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    # head_dim 32: the smallest vLLM's CPU attention takes; saved in float32 like the embedded model
    return make_tiny_model(tmp_path_factory.mktemp("tiny-vllm"), hidden=128)


def _recipe(tmp: Path, model_dir: Path, engine: str) -> Path:
    recipe = {
        "name": "quiet",
        "model": {"path": str(model_dir), "lora_rank": 4, "lora_alpha": 8},
        "data": {"dataset": "arithmetic", "difficulty": 2, "train_size": 16, "val_size": 4,
                 "train_batch_size": 2, "max_response_length": 6, "max_prompt_length": 96},
        "reward": {"function": "arithmetic"},
        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 8},
        "rollout": {"name": engine, "n": 4, "max_num_seqs": 16, "gpu_memory_utilization": 0.05},
        "trainer": {"total_training_steps": 2, "save_freq": 2, "test_freq": 2, "num_threads": 1,
                    "default_local_dir": str(tmp / "run")},
    }
    path = tmp / "quiet.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _tune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("TUNECLI_VERBOSE", "VLLM_LOGGING_LEVEL", "PYTHONWARNINGS", "TQDM_DISABLE")}
    return subprocess.run([sys.executable, "-c", "from tunecli.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
                          env={**clean, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})


def _library_lines(output: str) -> list[str]:
    lines = output.replace("\r", "\n").splitlines()
    return [line for line in lines if not any(re.search(p, line) for p in PRODUCT_LINES)]


@pytest.mark.slow
@pytest.mark.vllm
def test_quickstart_like_run_prints_only_product_lines(tmp_path, model_dir):
    pytest.importorskip("vllm")
    config = _recipe(tmp_path, model_dir, "vllm")
    quiet = _tune("train", "--config", str(config))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert _library_lines(quiet.stdout + quiet.stderr) == []
    step_lines = [line for line in quiet.stdout.splitlines() if line.startswith("step ")]
    assert len(step_lines) == 2 and all(len(line) > 80 for line in step_lines)  # one line each, never folded

    loud = _tune("train", "--config", str(config), "--overwrite", "--verbose")  # undoes the app's quiet default
    assert loud.returncode == 0, loud.stderr[-3000:]
    noise = _library_lines(loud.stdout + loud.stderr)
    assert any(mark in line for line in noise for mark in LIBRARY_MARKS), noise[:20]


def test_summary_table_has_no_empty_header_row(tmp_path):
    from tunecli.trainer.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, total_steps=1, start_step=0)
    with logger:
        logger.log(1, {"reward/mean": 0.5})
        from tunecli import console

        with console.out.capture() as captured:
            logger.write_summary("x", tmp_path, peak_gib=1.0, steps=1)
    lines = captured.get().splitlines()
    header = next(i for i, line in enumerate(lines) if "GRPO run summary" in line)
    first_row = lines[header + 2]  # the top border, then the first row: no empty header
    assert "steps trained" in first_row and "1" in first_row


def _narrowing_record(stored, param):
    return logging.LogRecord("vllm.model_executor.models.utils", logging.WARNING, "utils.py", 333,
                             "Attempted to load weight %s with dtype %s into parameter with dtype %s",
                             ("layers.0.mlp.down_proj.weight", stored, param), None)


def test_only_the_narrowing_the_recipe_asked_for_is_silenced():
    import torch

    from tunecli.trainer.rollout.vllm import _ExpectedNarrowing

    bf16, auto = _ExpectedNarrowing("bfloat16"), _ExpectedNarrowing("auto")
    assert not bf16.filter(_narrowing_record(torch.float32, torch.bfloat16))
    assert not auto.filter(_narrowing_record(torch.float32, torch.float16))
    assert bf16.filter(_narrowing_record(torch.float32, torch.float16))  # not the dtype asked for
    assert bf16.filter(_narrowing_record(torch.bfloat16, torch.float16))  # a lossy mismatch of another kind
    assert _ExpectedNarrowing("float32").filter(_narrowing_record(torch.float32, torch.bfloat16))


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-head"])
def test_engine_reads_float32_files_quietly_and_samples_the_policy(tmp_path, monkeypatch, tied):
    """A bf16 engine narrows float32 files with one vLLM 'Attempted to load weight ... float32 into
    bfloat16' line per tensor (122 for the embedded model). The engine reads the files (faster than
    starting empty and pushing the policy: setup 8.5 s against 9.4 s on the quickstart) and silences
    exactly those lines; its greedy output equals the same engine after the policy's weights, cast by us,
    are pushed into it."""
    pytest.importorskip("vllm")
    import torch
    from transformers import AutoModelForCausalLM

    from tests.test_vllm_engine import _make_peaky_model, _settings
    from tunecli.trainer.rollout import SamplingSettings, make_engine
    from tunecli.trainer.weights import weight_stream

    model_dir = _make_peaky_model(tmp_path / "m", tied=tied)  # a tied head once came out random here
    settings = _settings(model_dir)
    settings = type(settings)(**{**settings.__dict__, "rollout": settings.rollout.model_copy(update={"dtype": "bfloat16"})})
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=8, logprobs=False)
    # What passes the logger's filters reaches callHandlers. (A handler would not do: vLLM's logging
    # set-up at the first engine start clears the handlers of its loggers' existing children.)
    loader = logging.getLogger("vllm.model_executor.models.utils")
    shown: list[str] = []
    monkeypatch.setattr(loader, "callHandlers", lambda record: shown.append(record.getMessage()))
    engine = make_engine(settings, policy, None)
    monkeypatch.undo()
    try:
        assert engine.llm.llm_engine.vllm_config.load_config.load_format != "dummy"
        assert not [m for m in shown if "Attempted to load weight" in m], shown[:3]
        from_files = engine.generate(prompts, greedy).response_ids
        engine.update_weights(weight_stream(policy, "full"))
        assert engine.generate(prompts, greedy).response_ids == from_files
    finally:
        engine.close()
