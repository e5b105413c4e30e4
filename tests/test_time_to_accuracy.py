"""time_to_accuracy.py's bookkeeping: which adapter each wall-clock mark gets, and the table's arithmetic.

The training and scoring children are run by the benchmark itself (minutes each); here a fake clock
and synthetic scores check that a mark gets the model as it stood then, and how the table reads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _tta_workers  # noqa: E402
import time_to_accuracy as tta  # noqa: E402


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_mark_gets_the_adapter_as_it_stood_at_that_time(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_tta_workers, "elapsed", clock)
    monkeypatch.setattr(_tta_workers, "_adapter", lambda model: {"w": torch.tensor([float(model)])})
    snaps = _tta_workers.Snapshots(tmp_path, [5.0, 30.0, 35.0, 60.0, 120.0])
    clock.now = 20.0  # loaded at 20 s: the 5 s mark gets the base model (step 0)
    snaps.start(0)
    clock.now = 32.0  # step 1 ends at 32 s: the 30 s mark saw the model before it (step 0)
    snaps.after_step(1, 1)
    clock.now = 50.0  # step 2 ends at 50 s: the 35 s mark saw step 1's model
    snaps.after_step(2, 2)
    clock.now = 64.0  # budget 60 s: the run's last step ran past it; 60 s saw step 2's model
    snaps.after_step(3, 3)
    snaps.finish(60.0)
    got = {p.name: torch.load(p) for p in sorted(tmp_path.glob("snap-*.pt"))}
    assert [(s["mark_s"], s["step"], float(s["lora"]["w"])) for s in got.values()] == [
        (5.0, 0, 0.0), (30.0, 0, 0.0), (35.0, 1, 1.0), (60.0, 2, 2.0)]
    assert "snap-00120.pt" not in got  # past the budget: no mark


def test_marks_scale_with_the_budget_and_end_on_it():
    assert tta.marks_for(10)[-1] == 600 and tta.marks_for(10)[0] == 5 and tta.marks_for(10)[:3] == [5, 10, 15]
    assert tta.marks_for(5)[-1] == 300 and len(tta.marks_for(5)) == len(tta.DEFAULT_MARKS_MIN)


def _points(greedy_by_min: dict[float, float], contender="tunecli-vllm", seed=0):
    info = {"contender": contender, "seed": seed, "load_s": 30.0, "steps": 100, "settings": "s"}
    return [{"mark_s": m * 60, "greedy": g, "mean@4": g / 2, "info": info} for m, g in greedy_by_min.items()]


def test_minutes_to_and_accuracy_at():
    pts = _points({0.5: 0.4, 1: 0.55, 2: 0.62, 5: 0.7, 10: 0.66})
    assert tta.minutes_to(pts, 0.5) == 1.0 and tta.minutes_to(pts, 0.6) == 2.0
    assert tta.minutes_to(pts, 0.75) == float("inf")
    assert tta.accuracy_at(pts, 2) == 0.62 and tta.accuracy_at(pts, 4.9) == 0.62 and tta.accuracy_at(pts, 0.1) is None


def test_medians_and_ratio_against_trl():
    curves = {
        "tunecli-vllm": {s: _points({1: 0.5, 2: 0.6, 10: 0.8}, seed=s) for s in range(3)},
        "trl": {s: _points({4: 0.5, 8: 0.6, 10: 0.7}, "trl", s) for s in range(3)},
    }
    header, rows = tta.median_rows(curves)
    by_name = {r[0]: r for r in rows}
    # load 0.5 min on both sides: training-only minutes are 0.5 less
    assert by_name["tunecli-vllm"][2:5] == ["1.00 / 0.50", "2.00 / 1.50", "10.00 / 9.50"]
    assert by_name["trl"][2:5] == ["4.00 / 3.50", "8.00 / 7.50", "never / never"]
    assert by_name["TRL / tunecli-vllm"][2:5] == ["4.00x / 7.00x", "4.00x / 5.00x", "TRL never / TRL never"]
    assert by_name["tunecli-vllm"][-1] == "0.0"  # final = best


def test_report_from_a_workdir(tmp_path, capsys):
    for name, contender, accs in (("a", "tunecli-vllm", [0.4, 0.7, 0.75]), ("b", "trl", [0.4, 0.5, 0.6])):
        run = tmp_path / name
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"contender": contender, "seed": 0, "load_s": 12.0, "steps": 9,
                                                  "settings": f"{contender} settings"}))
        with (tmp_path / "scores.jsonl").open("a") as f:
            for mark, acc in zip((120, 300, 600), accs):
                f.write(json.dumps({"run": str(run), "mark_s": mark, "state_s": mark, "step": 1, "greedy": acc,
                                    "mean@4": acc}) + "\n")
    tta.report(tmp_path, 4)
    out = capsys.readouterr().out
    assert "trl settings" in out and (tmp_path / "time_to_accuracy.png").stat().st_size > 1000
    md = (tmp_path / "report.md").read_text()
    assert "| tunecli-vllm seed 0 | 0.20 | 9 | 40.0% | 70.0% | 75.0% |" in md


def test_table_columns_end_on_the_budget():
    assert tta.table_marks(10) == [2, 5, 10] and tta.table_marks(5) == [2, 5] and tta.table_marks(1.5) == [1.5]
    curves = {"tunecli-vllm": {0: _points({1: 0.5, 2: 0.6, 5: 0.8})}}  # a 5-minute run
    header, rows = tta.summary_rows(curves, 4)
    assert header[3:6] == ["greedy @ 2 min", "greedy @ 5 min", "mean@4 @ 5 min"]
    assert rows[0][3:6] == ["60.0%", "80.0%", "40.0%"] and not any("10 min" in h for h in header)


@pytest.mark.parametrize("engine,preset_engine", [("vllm", "vllm"), ("hf", "hf")])
def test_both_sides_follow_the_shipped_quickstart(engine, preset_engine):
    spec = _tta_workers.Spec(kind="tunecli", out="x", seed=2, engine=engine, questions=128)
    recipe = _tta_workers.quickstart_recipe(spec)
    assert recipe.rollout.name == preset_engine and recipe.trainer.seed == 2 and recipe.data.val_size == 128
    assert recipe.reward.function == "arithmetic" and recipe.rollout.n == 8 and recipe.data.train_batch_size == 4
    # the budget is the run's length, so the shipped cosine LR lands at its end
    assert recipe.trainer.total_training_minutes == spec.minutes and recipe.actor.lr_scheduler_type == "cosine"


def _lr_at(set_lr, clock, times, step=3):
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.5)
    seen = []
    for t in times:
        clock.now = t
        set_lr(optimizer, step)
        seen.append(optimizer.param_groups[0]["lr"])
    return seen


def test_trl_follows_the_quickstarts_cosine_by_the_clock():
    clock = Clock()
    clock.now = 100.0  # the run's clock starts when the setter is made
    cosine = _tta_workers.lr_setter(1e-4, 0, "cosine", 600.0, clock)
    assert _lr_at(cosine, clock, [100, 250, 400, 550, 700, 900]) == pytest.approx(
        [1e-4, 1e-4 * (0.5 + 0.5 * 2**-0.5), 0.5e-4, 1e-4 * (0.5 - 0.5 * 2**-0.5), 0.0, 0.0], abs=1e-12)
    constant = _tta_workers.lr_setter(1e-4, 0, "constant", 600.0, clock)
    assert _lr_at(constant, clock, [100, 400, 900]) == pytest.approx([1e-4] * 3)
    warming = _tta_workers.lr_setter(1e-4, 4, "cosine", 600.0, clock)
    assert _lr_at(warming, clock, [900], step=0) == pytest.approx([0.25e-4])  # warmup by steps, as the trainer's


def test_trl_settings_name_its_schedule():
    assert "cosine to the run's end" in _tta_workers._trl_settings(1e-4, "cosine")
    assert "lr 0.0001 held constant" in _tta_workers._trl_settings(1e-4, "constant")
