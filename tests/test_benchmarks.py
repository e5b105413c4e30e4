"""The benchmark harness' pure parts: statistics, table math, FLOP formulas, metrics parsing, peak RSS.

No timed assertions: the machine is shared, so only the arithmetic and the plumbing are checked.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest

from tunecli.trainer import heap

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import _step_floor  # noqa: E402
import compare_trl  # noqa: E402
import compile_update  # noqa: E402
import limits  # noqa: E402
import prefix_sharing  # noqa: E402
import startup  # noqa: E402


def test_step_stats_and_speedup():
    stats = _common.StepStats(step_s=[2.0, 4.0, 3.0], generated_tokens=[100, 200, 300], trained_tokens=[10, 20, 30])
    assert stats.median_s == 3.0
    assert (stats.min_s, stats.max_s) == (2.0, 4.0)
    assert stats.generated_tok_per_s == pytest.approx(600 / 9)
    assert stats.trained_tok_per_s == pytest.approx(60 / 9)
    assert _common.speedup(12.0, 3.0) == 4.0
    with pytest.raises(ValueError):
        _common.speedup(1.0, 0.0)


def test_comparison_rows_ratio_against_trl():
    fast = _common.StepStats([1.0, 1.0, 2.0], [64, 64, 64], [100, 100, 100])
    slow = _common.StepStats([8.0, 9.0, 10.0], [64, 64, 64], [100, 100, 100])
    rows = _common.comparison_rows({"tunecli-vllm": (fast, 2 * 1024**3), "trl": (slow, 3 * 1024**3)}, baseline="trl")
    assert rows[0][0] == "tunecli-vllm" and rows[0][-1] == "9.00x"  # 9 s / 1 s (medians)
    assert rows[1][-1] == "1.00x"
    assert rows[0][5] == "2.00 GiB"
    md = _common.markdown_table(_common.COMPARISON_HEADER, rows)
    assert md.splitlines()[0].startswith("| run |") and md.count("\n") == 3


def test_merge_stats_pools_repeats():
    a = _common.StepStats([1.0], [10], [20], extra={"train_s": [0.5]})
    b = _common.StepStats([3.0], [30], [40], extra={"train_s": [1.5]})
    merged = _common.merge_stats([a, b])
    assert merged.step_s == [1.0, 3.0] and merged.extra["train_s"] == [0.5, 1.5]
    assert merged.median_s == 2.0


def test_training_flops_formula():
    n, t = 1_000_000, 100
    assert limits.training_flops(n, t, method="full", recompute_old_logprobs=False, reference_forward=False) == 6 * n * t
    assert limits.training_flops(n, t, method="lora", recompute_old_logprobs=False, reference_forward=True) == 6 * n * t
    assert limits.training_flops(n, t, method="lora", recompute_old_logprobs=True, reference_forward=True) == 8 * n * t


def test_matmul_params_counts_tied_head_once():
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.proj = torch.nn.Linear(4, 6, bias=False)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight  # tied: one matmul weight, not two

    assert limits.matmul_params(Tiny()) == 4 * 6 + 10 * 4


def test_rate_steps_and_rollout_bound():
    fields = [_common.StepFields(step_s=3.0, rollout_s=1.0, train_s=2.0, generated_tokens=100)] * 2
    rates = limits.rate_steps(fields, [50, 50], n_params=1000, method="lora", recompute_old=False, reference=True)
    assert rates.tokens == 300 and rates.generated == 200
    assert rates.train_flops_s == pytest.approx(6 * 1000 * 300 / 4.0)
    assert rates.rollout_tok_s == pytest.approx(100.0)
    machine = limits.MachineLimits(fp32_flops=1e11, bf16_flops=2e11, copy_bytes_s=1e10, sum_bytes_s=1e10, per_shape=[])
    # bandwidth: 1e10 B/s / 4e6 B * 16 = 40000 tok/s; compute: 1e11 / 2e6 = 50000 tok/s -> bandwidth-bound
    assert limits.rollout_bound(machine, 1_000_000, 4_000_000, 16) == pytest.approx(40_000)
    # bf16 weights halve the bytes and use the bf16 peak: min(80000*..., 2e11/2e6 = 100000)
    assert limits.rollout_bound(machine, 1_000_000, 2_000_000, 64) == pytest.approx(100_000)


def test_step_floor_is_the_measured_rollout_and_sync_plus_training_at_the_peak():
    fields = [
        _common.StepFields(step_s=5.0, rollout_s=2.0, train_s=3.0, generated_tokens=100, sync_s=0.5),
        _common.StepFields(step_s=7.0, rollout_s=3.0, train_s=4.0, generated_tokens=100, sync_s=0.3),
        _common.StepFields(step_s=4.0, rollout_s=1.0, train_s=3.0, generated_tokens=100, sync_s=0.4),
    ]
    floor = _step_floor.step_floor(fields, [2e9, 1e9, 4e9], peak_flops=1e9)
    # per step: 2 + 0.5 + 2 = 4.5, 3 + 0.3 + 1 = 4.3, 1 + 0.4 + 4 = 5.4; without the sync 4, 4, 5
    assert floor.floor_s == pytest.approx(4.5) and floor.no_sync_s == pytest.approx(4.0)
    assert (floor.step_s, floor.rollout_s, floor.sync_s, floor.train_at_peak_s) == pytest.approx((5.0, 2.0, 0.4, 2.0))
    # TRL 28 s: a 7x step is 4 s, rollout + sync leave 1.6 s for the 2 s of training at the peak
    assert _step_floor.needed_training_fraction(floor, 28.0, 7.0) == pytest.approx(2.0 / 1.6)
    assert _step_floor.needed_training_fraction(floor, 56.0, 7.0) == pytest.approx(2.0 / 5.6)
    assert _step_floor.needed_training_fraction(floor, 14.0, 7.0) == float("inf")  # 2 s: the rollout alone


def test_trl_median_step_pools_compare_trls_runs_after_their_warm_up(tmp_path):
    run_dir = tmp_path / "tunecli-vllm-0"
    run_dir.mkdir()
    assert _step_floor.trl_median_step(run_dir) is None  # no TRL beside it
    (tmp_path / "trl-0.json").write_text(json.dumps({"step_s": [99.0, 20.0, 22.0], "generated_tokens": [1, 1, 1]}))
    (tmp_path / "trl-1.json").write_text(json.dumps({"step_s": [98.0, 30.0, 24.0], "generated_tokens": [1, 1, 1]}))
    assert _step_floor.trl_median_step(run_dir) == pytest.approx(23.0)  # median of 20, 22, 30, 24


def test_measure_machine_quick_gives_positive_numbers():
    m = limits.measure_machine(quick=True, threads=1)
    assert m.fp32_flops > 0 and m.bf16_flops > 0 and m.copy_bytes_s > 0 and m.sum_bytes_s > 0
    assert len(m.per_shape) == 1


def test_read_metrics_keeps_training_steps_in_order(tmp_path):
    rows = [
        {"step": 2, "timing/step_s": 2.0, "timing/rollout_s": 0.5, "timing/train_s": 1.5, "response/length": 10.0},
        {"step": 1, "timing/step_s": 3.0, "timing/rollout_s": 1.0, "timing/train_s": 2.0, "response/length": 12.5},
        {"step": 2, "val/acc": 0.5, "timing/val_s": 1.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = _common.read_metrics(tmp_path)
    assert [r["step"] for r in got] == [1, 2]
    f = _common.step_fields(got[0], samples_per_step=16)
    assert (f.step_s, f.rollout_s, f.train_s, f.generated_tokens) == (3.0, 1.0, 2.0, 200)
    with pytest.raises(FileNotFoundError):
        _common.read_metrics(tmp_path / "missing")


def test_run_child_sees_the_child_memory(tmp_path):
    code = "import time; b = bytearray(200 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)"
    run = _common.run_child([sys.executable, "-c", code], log_path=tmp_path / "log", sample_every_s=0.02)
    assert run.returncode == 0
    assert run.peak_rss_bytes > 200 * 1024 * 1024


def test_bench_recipe_is_valid_and_feeds_the_same_prompts_as_trl(tmp_path):
    """tunecli's own data pipeline, on the benchmark recipe, yields the prompts TRL gets, step by step."""
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.data import PromptSampler, load_splits

    cfg = compare_trl.BenchConfig(prompts=2, samples=3, max_new_tokens=8, steps=2, warmup=1)
    recipe = recipe_from_dict(compare_trl.tunecli_recipe(cfg, "hf", tmp_path / "run"))
    assert recipe.rollout.n == 3 and recipe.data.train_batch_size == 2
    assert recipe.trainer.total_training_steps == 3 and recipe.data.max_response_length == 8
    assert recipe.actor.ppo_micro_batch_size_per_gpu == 6  # one micro-batch per step, like TRL's batch
    train, _ = load_splits(recipe.data, recipe.trainer.seed)
    sampler = PromptSampler(train, recipe.data.train_batch_size, recipe.trainer.seed, recipe.data.shuffle)
    trainer_order = [ex.prompt for _ in range(cfg.total_steps) for ex in sampler.next_batch()]
    assert trainer_order == [ex.prompt for ex in compare_trl.bench_examples(cfg)]


def test_training_flops_counts_the_head_only_on_response_positions():
    # 100 tokens, of which 30 predict response tokens; head has 200 of the 1000 params
    got = limits.training_flops(1000, 100, method="lora", recompute_old_logprobs=False, reference_forward=False,
                                head_params=200, head_tokens=30)
    assert got == 4 * (800 * 100 + 200 * 30)


def test_compile_update_runs_the_trainers_update_on_quickstart_shaped_rollouts(capsys):
    first, again = compile_update.rollouts(2), compile_update.rollouts(2)
    assert [r.response_ids for r in first] == [r.response_ids for r in again]  # both sides get the same batches
    assert all(len(r) == 32 and r.group_size == 8 and 40 <= len(r.prompt_ids[0]) <= 50 for r in first)
    compile_update.worker("eager", updates=2, threads=1)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mode"] == "eager" and len(result["seconds"]) == 2 and all(s > 0 for s in result["seconds"])


def test_compile_update_runs_a_micro_batch_size_and_tabulates_the_runs(capsys):
    compile_update.worker("eager", updates=1, threads=1, micro=8)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["micro"] == 8 and len(result["seconds"]) == 1
    lines = compile_update.micro_table({16: [1.85, 1.81, 2.0], 32: [1.5, 1.61, 1.32]}).splitlines()
    assert lines[2:] == ["| 16 | 1.85 / 1.81 / 2.00 | 1.85 |", "| 32 | 1.50 / 1.61 / 1.32 | 1.50 |"]


def test_prefix_sharing_uses_the_quickstart_prompts_and_tabulates_per_block():
    _, prompts = prefix_sharing.quickstart_prompts(4)
    # Between one 32-token block and one 128-token block: the case the CPU block size decides.
    assert len(prompts) == 4 and all(32 < len(p) < 128 for p in prompts)
    rows = [{"block": 128, "full_s": 1.5, "prefill_s": 0.93, "prompt_tokens": 46, "cached": 0},
            {"block": 32, "full_s": 0.9, "prefill_s": 0.3, "prompt_tokens": 46, "cached": 32}]
    lines = prefix_sharing.table(rows).splitlines()
    assert lines[2:] == ["| 128 | 1.500 | 0.930 | 0 of 46 |", "| 32 | 0.900 | 0.300 | 32 of 46 |"]


def test_compile_update_profile_reports_the_matmul_share(capsys):
    compile_update.profile(updates=1, threads=1)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    share = int(last.rsplit("matmuls (mm, bmm, addmm) ", 1)[1].split("%")[0])
    assert 0 < share < 100


def test_startup_untouched_collector_leaves_pythons_defaults(monkeypatch):
    monkeypatch.setattr(heap, "gc", startup.untouched_collector())
    with heap.start_up():
        assert gc.isenabled()  # nothing parked
    assert gc.get_freeze_count() == 0  # nothing frozen


def test_startup_table_lists_each_run_per_collector():
    runs = [{"mode": m, "setup_s": s, "full_collections": c, "full_collection_s": t, "peak_rss_gib": 3.3}
            for m, s, c, t in [("shipped", 9.9, 2, 0.5), ("untouched", 13.0, 14, 3.6), ("shipped", 10.1, 3, 0.6),
                               ("untouched", 12.4, 14, 3.2)]]
    lines = startup.table(runs).splitlines()
    assert lines[2:] == ["| shipped | 9.90 / 10.10 | 10.00 | 2-3 | 0.55 | 3.30 |",
                         "| untouched | 13.00 / 12.40 | 12.70 | 14 | 3.40 | 3.30 |"]
