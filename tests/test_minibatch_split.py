"""Mini-batches split by samples over the processes, as verl does: the rule (config.rules), the
indices (trainer.batching) and a 2-process run whose mini-batch is smaller than the process count."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tunecli.config.io import recipe_from_dict
from tunecli.config.rules import batch_problems, mini_batch_that_splits
from tunecli.trainer.batching import mini_batch_chunks, minibatch_indices

sys.path.insert(0, str(Path(__file__).parent))
from torchrun_helpers import read_metrics, run, small_recipe, torchrun_cmd, write_recipe  # noqa: E402


def _recipe(batch: int, mini: int, n: int, micro: int = 2):
    return recipe_from_dict({"data": {"train_batch_size": batch}, "rollout": {"n": n},
                             "actor": {"ppo_mini_batch_size": mini, "ppo_micro_batch_size_per_gpu": micro},
                             "launch": {"strategy": "fsdp2"}})


def test_mini_batch_samples_must_split_over_the_processes():
    # 16 prompts x 4 samples over 256 processes: refused, with the smallest mini-batch that splits
    (problem,) = batch_problems(_recipe(512, 16, 4), 256)
    assert problem.field == "actor.ppo_mini_batch_size"
    assert "16 prompts x rollout.n 4 = 64 samples, which do not split evenly over the 256 processes" in str(problem)
    assert "e.g. 64" in str(problem)
    # 3 prompts x 2 samples over 2 processes: 3 samples each, allowed although 3 prompts do not split
    assert batch_problems(_recipe(6, 3, 2), 2) == []
    assert mini_batch_that_splits(32, 8, 96, 512) == 36 and mini_batch_that_splits(16, 4, 256, 32) is None


def test_short_last_mini_batch_and_micro_batch_are_allowed_with_a_note():
    notes: list[str] = []
    assert batch_problems(_recipe(1024, 80, 5, micro=4), 8, notes) == []  # 50 samples a rank: 12 micro-batches of 4 and one of 2
    assert any("the last mini-batch of each step holds 64 prompts" in n for n in notes)


def test_minibatch_indices_are_consecutive_sample_slices():
    assert minibatch_indices(8, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert minibatch_indices(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_prompts_are_cut_per_mini_batch_only_when_every_rank_gets_whole_prompts():
    assert mini_batch_chunks(8, 4, 2) == 2  # 2 prompts of each mini-batch per rank: same steps as one process
    assert mini_batch_chunks(8, 2, 4) == 1  # 2 prompts over 4 ranks: each rank slices its own samples
    assert mini_batch_chunks(10, 4, 2) == 1  # a short last mini-batch


@pytest.mark.slow
def test_two_processes_train_with_a_one_prompt_mini_batch(tiny_model_dir, tmp_path):
    recipe = small_recipe(tiny_model_dir, "mb1", actor={"ppo_mini_batch_size": 1, "ppo_micro_batch_size_per_gpu": 1},
                          trainer={"total_training_steps": 1})
    yaml, _ = write_recipe(recipe, tmp_path)
    result = run(torchrun_cmd("-m", "tunecli.train", "--config", str(yaml), nproc=2), timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    metrics = read_metrics(tmp_path / "runs" / "mb1")
    assert metrics[1]["actor/updates"] == 4  # 4 prompts / 1 a mini-batch; each rank holds 1 sample of each
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics[1].values() if isinstance(v, float))
