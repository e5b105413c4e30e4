"""trainer.total_training_minutes: a run whose length is wall-clock time. The run stops when its next
step would not fit (counting earlier launches), and a cosine LR decays over that time."""

from __future__ import annotations

import math

import pytest

from tunecli.trainer import stopping
from tunecli.trainer.schedule import lr_lambda
from tunecli.trainer.stopping import StopRules


def test_cosine_follows_whichever_of_steps_and_time_is_further_along():
    spent = {"share": 0.0}
    factor = lr_lambda(2, 1000, "cosine", lambda: spent["share"])
    assert factor(0) == pytest.approx(0.5)  # warmup first: time does not shorten it
    assert factor(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 998)))  # steps lead
    spent["share"] = 0.5
    assert factor(10) == pytest.approx(0.5)  # half the time gone: half way down the cosine
    spent["share"] = 1.2
    assert factor(10) == 0.0  # past the end: zero, not back up
    assert lr_lambda(2, 1000, "constant", lambda: 0.9)(10) == 1.0  # a constant LR ignores the clock
    assert lr_lambda(2, 10, "cosine")(10) == 0.0  # without a time length: steps alone, as before


@pytest.fixture
def clock(monkeypatch):
    t = {"now": 1000.0}
    monkeypatch.setattr(stopping, "now", lambda: t["now"])
    return t


def test_the_run_length_counts_earlier_launches_and_stops_a_spent_run_before_any_step(clock):
    rules = StopRules(None, total_minutes=10)
    assert rules.out_of_time() is None and rules.run_progress() == 0.0
    rules.elapsed_before = 540.0  # 9 minutes in earlier launches (a resumed checkpoint's elapsed_s)
    clock["now"] += 30
    assert rules.run_elapsed() == pytest.approx(570.0) and rules.run_progress() == pytest.approx(0.95)
    rules.step_done(20.0)
    assert rules.out_of_time() is None  # 570 + 20 fits in 600
    rules.step_done(50.0)  # the mean step is now 35 s: 570 + 35 does not fit
    assert "trainer.total_training_minutes" in rules.out_of_time()
    assert rules.run_elapsed() == 600.0  # the unused 30 s count as spent: a relaunch takes no step
    spent = StopRules(None, total_minutes=10)
    spent.elapsed_before = 610.0
    assert "10 min" in spent.out_of_time()  # no step of this launch needed to know


def test_max_minutes_is_this_launchs_budget_and_still_lets_a_launch_take_a_step(clock):
    rules = StopRules(1, total_minutes=None)
    rules.elapsed_before = 10_000.0  # earlier launches do not count against max_minutes
    assert rules.out_of_time() is None and rules.run_progress() == 0.0
    rules.step_done(50.0)
    clock["now"] += 20
    assert "trainer.max_minutes" in rules.out_of_time()  # 20 + 50 > 60


@pytest.mark.slow
def test_a_run_of_45_seconds_decays_its_cosine_ends_in_time_and_a_relaunch_takes_no_step(tmp_path, tiny_model_dir):
    import torch

    from tests.test_train_e2e import steps, train, write_recipe

    run_dir = tmp_path / "minutes"
    config = write_recipe(tmp_path, tiny_model_dir, run_dir, **{
        "trainer.total_training_steps": 10_000, "trainer.total_training_minutes": 0.75, "trainer.save_freq": -1,
        "trainer.test_freq": -1, "actor.lr_scheduler_type": "cosine", "actor.ppo_epochs": 1})
    done = train(config)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "The run's length of 0.75 min (trainer.total_training_minutes) reached after" in done.stdout + done.stderr
    logged = steps(run_dir)
    lrs = [logged[s]["actor/lr"] for s in sorted(logged)]
    assert 2 <= len(lrs) < 10_000
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.5 * lrs[0]  # down the cosine with the clock
    (ckpt,) = (run_dir / "checkpoints").glob("step_*")
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert 45 <= state["elapsed_s"] <= 90 and state["step"] == len(lrs)  # the rest held no step: all of it counts

    again = train(config)  # the run's time is spent: it resumes, takes no step, and says why
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"reached after {len(lrs)} steps" in again.stdout + again.stderr
    assert sorted(steps(run_dir)) == sorted(logged)
