"""Issue 11, rewards and data: rewards that hang, exit or return non-numbers; non-finite training values;
bad data rows. Each case stops the run with one paragraph (and Ctrl-C still stops a run inside a reward)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import tunecli
from tunecli.config.schema import DataConfig
from tunecli.errors import TuneError
from tunecli.rewards import RewardError, load_reward
from tunecli.trainer.data import load_splits

from tests.recipe_testutil import train_in_process

REPO = Path(tunecli.__file__).resolve().parents[1]  # the tree under test, for the runs in a subprocess

# ---------------------------------------------------------------------------------------------
# The reward call: time limit, exits, values
# ---------------------------------------------------------------------------------------------

SLOW = {
    "sleeps": "def score(prompt, completion, ground_truth, **kw):\n    time.sleep(5)\n    return 1.0\n",
    "swallows every Exception": (
        "def score(prompt, completion, ground_truth, **kw):\n"
        "    try:\n        time.sleep(5)\n    except Exception:\n        pass\n    return 1.0\n"
    ),
    "loops": "def score(prompt, completion, ground_truth, **kw):\n    end = time.time() + 5\n"
             "    while time.time() < end:\n        pass\n    return 1.0\n",
}


@pytest.mark.parametrize("body", SLOW.values(), ids=SLOW.keys())
def test_a_reward_call_over_timeout_s_is_a_reward_error(tmp_path, body):
    f = tmp_path / "slow.py"
    f.write_text("import time\n" + body)
    before = signal.getsignal(signal.SIGALRM)
    reward = load_reward(f"{f}:score", timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(RewardError) as info:
        reward("What is 2 + 2?", "four", "4")
    assert time.monotonic() - t0 < 3
    msg = str(info.value)
    assert "reward.timeout_s = 0.5" in msg and "completion='four'" in msg and "make the reward faster" in msg
    assert info.value.field == "reward.timeout_s"
    assert signal.getsignal(signal.SIGALRM) == before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    fast = tmp_path / "fast.py"
    fast.write_text("def score(prompt, completion, ground_truth, **kw):\n    return 0.5\n")
    assert load_reward(f"{fast}:score", timeout_s=0.5)("p", "c", "g") == 0.5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left armed after a call


def test_a_reward_calling_sys_exit_is_a_reward_error(tmp_path):
    f = tmp_path / "exits.py"
    f.write_text("import sys\ndef score(prompt, completion, ground_truth, **kw):\n    sys.exit(3)\n")
    with pytest.raises(RewardError) as info:
        load_reward(f"{f}:score")("What is 2 + 2?", "four", "4")
    msg = str(info.value)
    assert "SystemExit: 3" in msg and "completion='four'" in msg and "Fix the reward function" in msg


@pytest.mark.parametrize("value", ["float('nan')", "float('inf')", "-float('inf')", "'1.0'", "[1.0]"])
def test_a_reward_returning_a_non_finite_or_non_number_is_a_reward_error(tmp_path, value):
    f = tmp_path / "bad.py"
    f.write_text(f"def score(prompt, completion, ground_truth, **kw):\n    return {value}\n")
    with pytest.raises(RewardError) as info:
        load_reward(f"{f}:score")("What is 2 + 2?", "four", "4")
    msg = str(info.value)
    assert str(f) in msg and "completion='four'" in msg and "must return a finite float" in msg
    assert repr(eval(value)) in msg


def test_finite_numbers_of_any_numeric_type_are_rewards(tmp_path):
    f = tmp_path / "ok.py"
    f.write_text(
        "import numpy, torch\n"
        "def score(prompt, completion, ground_truth, kind='float', **kw):\n"
        "    return {'float': 0.5, 'int': 1, 'bool': True, 'numpy': numpy.float32(0.25), 'torch': torch.tensor(2.0)}[kind]\n"
    )
    reward = load_reward(f"{f}:score")
    assert [reward("p", "c", "g", kind=k) for k in ("float", "int", "bool", "numpy", "torch")] == [0.5, 1.0, 1.0, 0.25, 2.0]


# ---------------------------------------------------------------------------------------------
# Runs: a tiny random Llama with the HF engine
# ---------------------------------------------------------------------------------------------

REWARD_PY = """
import os, sys, time

CALLS = [0]
AFTER = 4  # one step's calls: 2 prompts x 2 samples


def reward(prompt, completion, ground_truth, **kwargs):
    CALLS[0] += 1
{body}
    return min(len(completion), 40) / 40.0
"""
BODIES = {
    "plain": "    pass",
    "hangs": "    if CALLS[0] > AFTER:\n        open(os.environ['MARKER'], 'w').close()\n        time.sleep(10**6)",
    "raises KeyboardInterrupt": "    if CALLS[0] > AFTER:\n        raise KeyboardInterrupt",
    "exits": "    sys.exit(3)",
    "nan": "    if CALLS[0] % 2:\n        return float('nan')",
    "none": "    return None",  # None only means "not applicable" in the TRL contract
    "huge": "    return 1e308 if CALLS[0] % 2 else -1e308",  # finite in Python, inf in the float32 rewards
    "huge on rank 1": "    if os.environ.get('RANK') == '1':\n        return 1e308",
}


def write_recipe(tmp: Path, model_dir: Path, body: str, **reward) -> Path:
    (tmp / "reward.py").write_text(REWARD_PY.format(body=BODIES[body]))
    recipe = {
        "name": "tiny",
        "model": {"path": str(model_dir), "lora_rank": 4, "lora_alpha": 8},
        "data": {"dataset": "arithmetic", "difficulty": 1, "train_size": 8, "val_size": 2, "train_batch_size": 2,
                 "max_response_length": 4},
        "reward": {"function": f"{tmp / 'reward.py'}:reward", **reward},
        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 4, "lr": 1e-3},
        "rollout": {"n": 2},
        "trainer": {"total_training_steps": 2, "save_freq": 1, "test_freq": -1, "val_before_train": False,
                    "default_local_dir": str(tmp / "run"), "num_threads": 1, "seed": 1},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env(tmp: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "MARKER": str(tmp / "inside-reward")}


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunecli.train", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(config.parent))


def checkpoints(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "run" / "checkpoints").glob("step_*"))


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


@pytest.mark.slow
def test_a_hanging_reward_stops_the_run_after_timeout_s(tmp_path, tiny_model_dir):
    proc = _start(write_recipe(tmp_path, tiny_model_dir, "hangs", timeout_s=1))
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    err = one_line(err)
    assert "reward.timeout_s = 1 s" in err and "make the reward faster" in err and "Traceback" not in err
    assert checkpoints(tmp_path) == ["step_1"]  # the step before it was saved by save_freq, nothing after


@pytest.mark.slow
@pytest.mark.parametrize("body", ["hangs", "raises KeyboardInterrupt"])
def test_ctrl_c_inside_a_reward_stops_the_run(tmp_path, tiny_model_dir, body):
    """Ctrl-C while a reward hangs (no time limit), or a reward raising KeyboardInterrupt itself: the
    step is abandoned, the previous step's checkpoint is written and the run exits 130."""
    proc = _start(write_recipe(tmp_path, tiny_model_dir, body, timeout_s=None))
    try:
        if body == "hangs":
            deadline = time.time() + 120
            while not (tmp_path / "inside-reward").exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(0.2)  # inside time.sleep now
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30 if body == "hangs" else 120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Interrupted at step 1/2" in one_line(out) and "Traceback" not in err
    assert checkpoints(tmp_path) == ["step_1"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "reward/mean" in m] == [1]  # the abandoned step left no trace


@pytest.mark.slow
@pytest.mark.parametrize("body, expected", [
    ("exits", "failed with SystemExit: 3"),
    ("nan", "returned a non-finite number: nan"),
    ("none", "returned a non-number: None"),
])
def test_a_reward_that_exits_or_returns_nan_stops_the_run(tmp_path, tiny_model_dir, capsys, body, expected):
    code = train_in_process(write_recipe(tmp_path, tiny_model_dir, body))
    err = one_line(capsys.readouterr().err)
    assert code == 1 and expected in err and "The sample: prompt=" in err
    assert checkpoints(tmp_path) == []


def _nan_loss(real):
    def policy_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats
    return policy_loss


def _inf_gradient(real):
    def policy_loss(logp, *args, **kwargs):
        logp.register_hook(lambda grad: grad * float("inf"))  # the loss stays finite, its gradient does not
        return real(logp, *args, **kwargs)
    return policy_loss


@pytest.mark.slow
@pytest.mark.parametrize("quantity, body, patch", [
    ("advantage", "huge", None),
    ("loss", "plain", _nan_loss),
    ("gradient norm", "plain", _inf_gradient),
])
def test_a_non_finite_value_stops_the_run_before_the_weights_change(
    tmp_path, tiny_model_dir, capsys, monkeypatch, quantity, body, patch
):
    import torch

    from tunecli.trainer import loop

    if patch is not None:
        monkeypatch.setattr(loop, "policy_loss", patch(loop.policy_loss))
    weights_finite = []
    real_cleanup = loop.Trainer.cleanup

    def cleanup(trainer):
        weights_finite.append(all(bool(torch.isfinite(p).all()) for p in trainer.policy.model.parameters()))
        real_cleanup(trainer)

    monkeypatch.setattr(loop.Trainer, "cleanup", cleanup)
    code = train_in_process(write_recipe(tmp_path, tiny_model_dir, body))
    err = one_line(capsys.readouterr().err)
    assert code == 1, err
    assert f"Training stopped at step 1: the {quantity} is not a finite number" in err and "Fix:" in err
    assert weights_finite == [True]
    assert checkpoints(tmp_path) == []  # nothing saved from a non-finite state


@pytest.mark.slow
def test_a_non_finite_value_on_one_rank_stops_every_rank(tmp_path, tiny_model_dir):
    """Two processes (gloo): rank 1's advantages are NaN, rank 0's are fine; both stop at step 1
    instead of rank 0 waiting forever in the next collective."""
    sys.path.insert(0, str(Path(__file__).parent))
    from torchrun_helpers import torchrun_cmd

    config = write_recipe(tmp_path, tiny_model_dir, "huge on rank 1")
    cmd = torchrun_cmd("-m", "tunecli.train", "--config", str(config), "launch.n_gpus_per_node=2", "launch.strategy=fsdp2",
                       "actor.ppo_micro_batch_size_per_gpu=2", "trainer.logger=[console,tensorboard]")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env(tmp_path), cwd=tmp_path,
                            start_new_session=True)
    err = one_line(result.stderr)
    assert result.returncode != 0
    assert err.count("Training stopped at step 1: the advantage is not a finite number") == 2, err[-3000:]  # both ranks
    assert checkpoints(tmp_path) == []
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0's tracker only


# ---------------------------------------------------------------------------------------------
# Data rows
# ---------------------------------------------------------------------------------------------

GOOD = {"question": "Q?", "answer": "work\n#### 7"}
BAD_ROWS = {
    "null prompt": ("custom", [{"q": "hi", "a": 1}, {"q": None, "a": 2}], "line 2", "column 'q'", "None"),
    "number prompt": ("custom", [{"q": 17, "a": 1}], "line 1", "column 'q'", "17"),
    "chat without content": ("custom", [{"q": [{"role": "user"}], "a": 1}], "line 1", "column 'q'", "[{'role': 'user'}]"),
    "gsm8k without answer": ("gsm8k", [GOOD, {"question": "Q2?"}], "line 2", "'answer'", "columns: question"),
    "gsm8k without question": ("gsm8k", [{"answer": "#### 1"}], "line 1", "'question'", "columns: answer"),
    "gsm8k answer not text": ("gsm8k", [{"question": "Q?", "answer": 42}], "line 1", "'answer'", "42"),
    "gsm8k answer without ####": ("gsm8k", [{"question": "Q?", "answer": "7"}], "line 1", "'####'", "'7'"),
    "jsonl array line": ("gsm8k", [GOOD, ["Q?", "#### 1"]], "line 2", "an array", "['Q?', '#### 1']"),
    "jsonl number line": ("custom", [{"q": "hi", "a": 1}, 5], "line 2", "a number", "(5)"),
}


@pytest.mark.parametrize("dataset, rows, line, column, value", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_data_rows_are_one_paragraph(tmp_path, dataset, rows, line, column, value):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(dataset=dataset, train_files=str(path), val_files=str(path), prompt_key="q", answer_key="a")
    with pytest.raises(TuneError) as info:
        load_splits(cfg, 0)
    msg = str(info.value)
    assert f"{path} {line}" in msg and column in msg and value in msg and "Fix" in msg and "\n" not in msg
    assert info.value.field == "data.train_files"


def test_bad_parquet_rows_are_one_paragraph(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"q": "hi", "a": "1"}, {"q": None, "a": "2"}]), tmp_path / "d.parquet")
    cfg = DataConfig(dataset="custom", train_files=str(tmp_path / "d.parquet"), val_size=1, prompt_key="q", answer_key="a")
    with pytest.raises(TuneError, match=r"d.parquet row 1 \(counting from 0\): the prompt \(column 'q', data.prompt_key\) is None"):
        load_splits(cfg, 0)
    verl = {"prompt": [{"role": "user", "content": "Q"}], "reward_model": {"ground_truth": "1"}}
    pq.write_table(pa.Table.from_pylist([verl, {**verl, "reward_model": None}]), tmp_path / "v.parquet")
    cfg = DataConfig(dataset="custom", train_files=str(tmp_path / "v.parquet"), val_size=1)
    with pytest.raises(TuneError, match=r"v.parquet row 1 \(counting from 0\): this row is not in verl's schema"):
        load_splits(cfg, 0)


@pytest.mark.parametrize("rows, val_size", [(5, 5), (5, 64)])
def test_held_out_rows_are_never_training_rows(tmp_path, rows, val_size):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"q": f"Q{i}", "a": i}) + "\n" for i in range(rows)))
    cfg = DataConfig(dataset="custom", train_files=str(path), prompt_key="q", answer_key="a", val_size=val_size)
    with pytest.raises(TuneError) as info:
        load_splits(cfg, 0)
    msg = str(info.value)
    assert info.value.field == "data.val_size" and f"data.val_size = {val_size}" in msg and f"has only {rows}" in msg
    assert "lower data.val_size below 5" in msg and "data.val_files" in msg
    train, val = load_splits(cfg.model_copy(update={"val_size": 4}), 0)
    assert [e.prompt for e in train] == ["Q0"] and [e.prompt for e in val] == ["Q1", "Q2", "Q3", "Q4"]


def test_data_errors_come_before_the_model_loads(tmp_path, monkeypatch):
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer import loop

    def load_policy(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(loop, "load_policy", load_policy)
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": null, "a": 1}\n')
    recipe = recipe_from_dict({}, [f"data.train_files={path}", "data.dataset=custom", "data.prompt_key=q",
                                   "data.answer_key=a", "data.train_batch_size=1", "actor.ppo_mini_batch_size=1", "actor.ppo_micro_batch_size_per_gpu=4",
                                   f"trainer.default_local_dir={tmp_path / 'run'}", "trainer.device=cpu"])
    trainer = loop.Trainer(recipe)
    try:
        with pytest.raises(TuneError, match="line 1: the prompt"):
            trainer.setup()
    finally:
        trainer.cleanup()
