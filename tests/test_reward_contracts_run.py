"""One training step (tiny random Llama, HF engine) with each reward contract, a weighted pair, and the
trackers read back offline through their own readers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from tests.recipe_testutil import train_in_process as train

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


def wandb_log_records(path: Path) -> list[bytes]:
    """The records of a .wandb file. wandb >= 0.2x writes it from its Go core and ships no Python
    reader any more; the format is its documented LevelDB-style log: a 7-byte file header (':W&B',
    magic, version), then 32 KiB blocks of records with a 7-byte header (crc32, length, type
    1 full / 2 first / 3 middle / 4 last). Each record is a wandb protobuf ``Record``."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a header: the block is padded
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
    return records


def wandb_records(run_dir: Path) -> tuple[list[dict], list[str]]:
    """The history rows and the logged keys of the offline run, parsed with wandb's own protobuf."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows, keys = [], []
    for data in wandb_log_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append(row)
            keys += row
    return rows, keys


@pytest.mark.slow
def test_trackers_write_what_their_own_readers_read_back(tmp_path, tiny_model_dir, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the trainer opts in for its own store
    monkeypatch.delenv("TENSORBOARD_DIR", raising=False)
    config = write_recipe(tmp_path, tiny_model_dir, {"functions": ["arithmetic", "format"], "format_pattern": "."},
                          logger=["console", "tensorboard", "wandb", "mlflow"], log_completions=2,
                          project_name="proj", experiment_name="exp1")
    assert train(config) == 0
    run = tmp_path / "run"
    logged = step_metrics(tmp_path)

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"reward/mean", "reward/arithmetic", "reward/format", "timing/reward_s"} <= set(scalars)
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("reward/format")] == [(1, logged["reward/format"])]
    assert any(tag.startswith("completions") for tag in events.Tags()["tensors"])

    rows, keys = wandb_records(run)
    step_row = next(r for r in rows if "reward/mean" in r)
    assert step_row["reward/arithmetic"] == logged["reward/arithmetic"] and step_row["_step"] == 1
    assert "completions/path" in keys  # the table, in the row's nested keys
    assert len(list(run.glob("wandb/offline-run-*/files/media/table/completions_1_*.table.json"))) == 1

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("proj").experiment_id])
    assert found.info.run_name == "exp1" and found.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "reward/format")
    assert [(m.step, m.value) for m in history] == [(1, logged["reward/format"])]
    assert [a.path for a in client.list_artifacts(found.info.run_id, "completions")] == ["completions/step_1.json"]
