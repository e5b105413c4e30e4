"""metrics.jsonl, completions.jsonl and summary.json as the MetricsLogger writes them (no training)."""

from __future__ import annotations

import json

from tunecli.trainer.metrics import MetricsLogger


class Recorder:
    """A tracker that keeps what it is given."""

    def __init__(self):
        self.logged, self.tables, self.closed = [], [], False

    def log(self, step, metrics):
        self.logged.append((step, metrics))

    def table(self, step, rows):
        self.tables.append((step, rows))

    def close(self):
        self.closed = True


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_metrics_and_completions_go_to_file_and_trackers_and_resume_keeps_earlier_steps(tmp_path):
    tracker = Recorder()
    with MetricsLogger(tmp_path, 3, 0, trackers=[tracker], console=False) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"reward/mean": step / 10})
            logger.log_completions(step, [{"prompt": "p", "completion": f"c{step}", "reward": 1.0, "advantage": 0.5}])
    assert tracker.closed and [s for s, _ in tracker.logged] == [1, 2, 3] and tracker.logged[0][1] == {"reward/mean": 0.1}
    assert tracker.tables[1] == (2, [{"step": 2, "prompt": "p", "completion": "c2", "reward": 1.0, "advantage": 0.5}])
    MetricsLogger(tmp_path, 3, 2)  # resumed from the step-2 checkpoint: step 3 is run again
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [r["completion"] for r in lines(tmp_path / "completions.jsonl")] == ["c1", "c2"]
    MetricsLogger(tmp_path, 3, 0)  # started over
    assert not (tmp_path / "completions.jsonl").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_console_off_prints_no_live_line_and_other_ranks_write_nothing(tmp_path, capsys):
    with MetricsLogger(tmp_path / "a", 1, 0, console=False) as logger:
        logger.log(1, {"reward/mean": 0.5})
    assert "reward 0.500" not in capsys.readouterr().out
    with MetricsLogger(tmp_path / "a", 1, 0) as logger:
        logger.log(1, {"reward/mean": 0.5})
    assert "reward 0.500" in capsys.readouterr().out
    tracker = Recorder()
    silent = MetricsLogger(tmp_path / "b", 1, 0, enabled=False, trackers=[tracker])
    silent.log(1, {"reward/mean": 0.5})
    silent.log_completions(1, [{"prompt": "p"}])
    assert tracker.logged == [] and not (tmp_path / "b").exists()


def test_summary_json_holds_numbers_with_units_and_the_table_shows_them(tmp_path, capsys):
    with MetricsLogger(tmp_path, 2, 0) as logger:
        logger.log(0, {"val/acc": 0.25}, show=False)
        for step, reward in ((1, 0.125), (2, 0.75)):
            logger.log(step, {"reward/mean": reward, "timing/step_s": 2.0 * step, "timing/rollout_s": 1.0,
                              "timing/train_s": 0.5, "timing/reward_s": 0.01, "perf/tokens_per_s": 100.0})
        logger.log(2, {"val/acc": 0.5}, show=False)
        logger.write_summary("tiny", tmp_path, peak_gib=1.23456, steps=2)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train_reward_first"] == 0.125 and summary["train_reward_last"] == 0.75
    assert summary["val_acc_first"] == 0.25 and summary["val_acc_last"] == 0.5
    assert summary["mean_step_s"] == 3.0 and summary["units"]["mean_step_s"] == "s"
    assert summary["peak_rss_gib"] == 1.235 and summary["units"]["peak_rss_gib"] == "GiB"
    assert summary["steps"] == 2 and summary["files"]["run directory"] == str(tmp_path)
    out = " ".join(capsys.readouterr().out.split())
    assert "mean step time │ 3.000 s" in out and "train reward, last step │ 0.750" in out
