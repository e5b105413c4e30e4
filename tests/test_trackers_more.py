"""Trackers beyond the `trackers` extra: a tracker that cannot start is one clear error, and swanlab
and trackio (not in the extra) write what their own storage reads back, where they are installed."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
import types
from pathlib import Path

import pytest

from tunecli.errors import TuneError
from tunecli.trainer.trackers import open_trackers


def test_a_tracker_that_cannot_start_is_one_clear_error(tmp_path, monkeypatch):
    fake = types.ModuleType("swanlab")

    def init(**_):  # what swanlab 0.10 raises online with no login and no terminal
        raise RuntimeError("Failed to initialize SwanLab in online mode: no TTY is available for interactive login.")

    fake.init = init
    monkeypatch.setitem(sys.modules, "swanlab", fake)
    monkeypatch.setattr("tunecli.trainer.trackers.check_available", lambda names: None)
    with pytest.raises(TuneError) as err:
        open_trackers(["console", "swanlab"], "proj", "exp", tmp_path, {})
    text = str(err.value)
    assert err.value.field == "trainer.logger" and "no TTY is available" in text
    assert "SWANLAB_MODE=offline" in text and "take swanlab out of trainer.logger" in text


def _log_two_steps(name: str, run_dir: Path) -> None:
    (tracker,) = open_trackers([name], "proj", "exp1", run_dir, {"lr": 0.1})
    tracker.log(1, {"reward/mean": 0.5})
    tracker.log(2, {"reward/mean": 0.75})
    tracker.table(2, [{"step": 2, "prompt": "1+1", "completion": "2", "reward": 1.0, "advantage": 0.5}])
    tracker.close()


@pytest.mark.skipif(importlib.util.find_spec("swanlab") is None, reason="swanlab is not installed (not in the trackers extra)")
def test_swanlab_offline_writes_the_run_under_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _log_two_steps("swanlab", tmp_path)
    (run,) = (tmp_path / "swanlog").glob("run-*")
    (data,) = run.glob("run-*.swanlab")
    assert data.stat().st_size > 0 and "lr" in (run / "files" / "config.yaml").read_text()


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio is not installed (not in the trackers extra)")
def test_trackio_metrics_and_table_are_in_its_local_database(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    _log_two_steps("trackio", tmp_path)
    (db,) = list((tmp_path / "trackio").glob("proj.db")) or list((tmp_path / "home").rglob("proj.db"))
    rows = sqlite3.connect(db).execute("select run_name, step, metrics from metrics order by id").fetchall()
    logged = [(name, step, json.loads(metrics)) for name, step, metrics in rows]
    assert logged[:2] == [("exp1", 1, {"reward/mean": 0.5}), ("exp1", 2, {"reward/mean": 0.75})]
    assert logged[2][2]["completions"]["_value"][0]["completion"] == "2"
