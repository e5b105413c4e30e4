"""Run directories: one run at a time (a lock that a killed owner frees), --no-resume moves the old run
aside instead of deleting it (--overwrite deletes), and an unwritable directory is one paragraph,
before the model loads."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tunecli.config.io import recipe_from_dict
from tunecli.errors import TuneError
from tunecli.trainer import rundir

sys.path.insert(0, str(Path(__file__).parent))
from torchrun_helpers import read_metrics, small_recipe, tune_cmd, worker_env, write_recipe  # noqa: E402

HOLD_LOCK = """
import sys
from tunecli.config.io import recipe_from_dict
from tunecli.trainer import rundir
lock = rundir.acquire(sys.argv[1], recipe_from_dict({}))
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes stdin (or kills this process)
lock.release()
"""


def recipe(run_dir: Path | None = None, **trainer):
    if run_dir is not None:
        trainer["default_local_dir"] = str(run_dir)
    return recipe_from_dict({"trainer": trainer})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the lock of a run directory; yields (process, run_dir)."""
    procs = []

    def start(run_dir: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=worker_env())
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------


def test_a_live_owner_is_refused_with_who_and_a_fix(tmp_path, monkeypatch, holder):
    run_dir = tmp_path / "runs" / "x"
    owner = holder(run_dir)
    with pytest.raises(TuneError) as e:
        rundir.acquire(run_dir, recipe(run_dir))
    msg = str(e.value)
    assert f"{run_dir} is in use by pid {owner.pid} on host {socket.gethostname()} since " in msg
    assert f"(command: {sys.executable} -c " in msg and "hold the lock until" in msg  # the owner's command line
    assert "Wait for it, stop it, or give this run another trainer.default_local_dir" in msg
    assert "\n" not in msg
    # Refused with the experiment name when that chose the directory.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TuneError, match="another trainer.experiment_name"):
        rundir.acquire(Path("runs/x"), recipe(experiment_name="x"))


def test_sigkilled_owner_frees_the_lock_and_is_reported(tmp_path, holder, capsys):
    run_dir = tmp_path / "run"
    owner = holder(run_dir)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert json.loads((run_dir / rundir.LOCK_NAME).read_text())["pid"] == owner.pid  # no cleanup ran
    lock = rundir.acquire(run_dir, recipe(run_dir))
    err = flat(capsys.readouterr().err)
    assert f"locked by pid {owner.pid} on host {socket.gethostname()}" in err and "which is gone" in err
    assert json.loads((run_dir / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_release_frees_the_directory_for_the_next_run(tmp_path, holder):
    run_dir = tmp_path / "run"
    lock = rundir.acquire(run_dir, recipe(run_dir))
    with pytest.raises(TuneError, match=f"in use by pid {os.getpid()}"):  # a second lock, even in-process
        rundir.acquire(run_dir, recipe(run_dir))
    lock.release()
    assert not (run_dir / rundir.LOCK_NAME).exists()
    owner = holder(run_dir)  # another process takes it at once
    owner.stdin.close()
    assert owner.wait(timeout=30) == 0
    rundir.acquire(run_dir, recipe(run_dir)).release()


def _other_host():
    return {"pid": 4242, "host": "elsewhere", "started": "2024-01-01 10:00:00+00:00", "command": "tune train --config a.yaml"}


def _this_process(**changes):
    # This (live) process, on this host, named as the owner of a lock nobody holds.
    start = rundir._process_start(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": "2024-01-01 10:00:00+00:00",
            "process_start": start, "command": "tune train --config a.yaml", **changes}


@pytest.mark.parametrize(
    "record,break_lock,outcome",
    [
        # Another host's lock, free here: maybe a live run on a shared filesystem.
        (_other_host(), False, "is locked by pid 4242 on host elsewhere since 2024-01-01 10:00:00+00:00 "
                               "(command: tune train --config a.yaml) and cannot be checked from this host"),
        (_other_host(), True, "--break-lock: taking over the lock of"),
        # A live owner on this host that holds no flock: a filesystem without locks.
        (_this_process(), False, "which still runs but does not hold the lock"),
        (_this_process(), True, "--break-lock: taking over the lock of"),
        # The pid runs, but started after the owner did: reused, the owner is gone.
        (_this_process(process_start="1"), False, "which is gone (it did not stop cleanly"),
        ("not json", False, ""),  # a record cut short by a crash: free
    ],
)
def test_a_free_lock_is_taken_when_its_owner_is_surely_gone(tmp_path, capsys, record, break_lock, outcome):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock_file = run_dir / rundir.LOCK_NAME
    text = json.dumps(record) if isinstance(record, dict) else record
    lock_file.write_text(text)
    if "is locked by" in outcome or "still runs" in outcome:
        with pytest.raises(TuneError) as e:
            rundir.acquire(run_dir, recipe(run_dir), break_lock=break_lock)
        msg = str(e.value)
        assert outcome in msg and "run again with --break-lock" in msg and "\n" not in msg
        assert lock_file.read_text() == text  # untouched
        return
    lock = rundir.acquire(run_dir, recipe(run_dir), break_lock=break_lock)
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert outcome in flat(capsys.readouterr().err)
    lock.release()


def test_without_flock_the_owners_record_decides(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    run_dir = tmp_path / "run"
    lock = rundir.acquire(run_dir, recipe(run_dir))  # nobody named: taken
    with pytest.raises(TuneError, match="which still runs but does not hold the lock"):
        rundir.acquire(run_dir, recipe(run_dir))  # a live owner on this host: refused
    lock.release()


# ---------------------------------------------------------------------------------------------
# Starting over
# ---------------------------------------------------------------------------------------------


def _old_run(run_dir: Path, tag: str) -> None:
    (run_dir / "checkpoints" / "step_2").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_2" / "config.yaml").write_text(tag)
    (run_dir / "metrics.jsonl").write_text(f'{{"step": 1, "tag": "{tag}"}}\n')


def test_no_resume_moves_the_old_run_aside_under_the_lock(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "x"
    lock = rundir.acquire(run_dir, recipe(run_dir))
    assert rundir.start_over(run_dir, overwrite=False) is None  # nothing to move: nothing happens
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["x"]
    _old_run(run_dir, "first")
    (tmp_path / "runs" / "x.1").mkdir()  # someone else's directory: the next free number is used
    aside = rundir.start_over(run_dir, overwrite=False)
    assert aside == tmp_path / "runs" / "x.2"
    assert f"the old run was moved to {aside}" in flat(capsys.readouterr().out)
    assert (aside / "checkpoints" / "step_2" / "config.yaml").read_text() == "first"
    assert (aside / "metrics.jsonl").is_file() and not (aside / rundir.LOCK_NAME).exists()
    assert [p.name for p in run_dir.iterdir()] == [rundir.LOCK_NAME]  # the lock stayed, still held
    with pytest.raises(TuneError, match="in use"):
        rundir.acquire(run_dir, recipe(run_dir))
    _old_run(run_dir, "second")
    assert rundir.start_over(run_dir, overwrite=False) == tmp_path / "runs" / "x.3"
    assert (tmp_path / "runs" / "x.2" / "metrics.jsonl").read_text().count("first") == 1
    lock.release()


def test_overwrite_deletes_the_old_run_and_keeps_the_lock(tmp_path, capsys):
    run_dir = tmp_path / "x"
    lock = rundir.acquire(run_dir, recipe(run_dir))
    _old_run(run_dir, "old")
    (run_dir / "link").symlink_to(tmp_path / "elsewhere")
    assert rundir.start_over(run_dir, overwrite=True) is None
    assert [p.name for p in run_dir.iterdir()] == [rundir.LOCK_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    assert "deleted the old run" in capsys.readouterr().out
    lock.release()


# ---------------------------------------------------------------------------------------------
# Unwritable run directories
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file", "runs_is_a_file"])
def test_unwritable_run_dir_is_one_paragraph_with_field_path_reason_and_fix(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file")
    if where == "runs_is_a_file":
        (tmp_path / "runs").write_text("a file")
        r, run_dir, field, blocker = recipe(experiment_name="x"), Path("runs/x"), "trainer.experiment_name = 'x'", tmp_path / "runs"
    else:
        run_dir = tmp_path / "blocker" / "run" if where == "under_a_file" else tmp_path / "blocker"
        r, field, blocker = recipe(run_dir), f"trainer.default_local_dir = '{run_dir}'", tmp_path / "blocker"
    with pytest.raises(TuneError) as e:
        rundir.acquire(run_dir, r)
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg
    assert f"the run directory {tmp_path / run_dir} cannot be created or written" in msg
    assert f"{blocker} is a file, not a directory" in msg
    assert f"Fix: move the file {blocker} out of the way, or " in msg and "trainer.default_local_dir" in msg.split("Fix: ")[1]
    assert (tmp_path / "blocker").read_text() == "a file"


def test_a_full_disk_says_so_and_lets_the_lock_go(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "_write_owner", full)
    run_dir = tmp_path / "run"
    with pytest.raises(TuneError) as e:
        rundir.acquire(run_dir, recipe(run_dir))
    assert "(No space left on device). Fix: free space on the disk that holds" in str(e.value)
    monkeypatch.undo()
    rundir.acquire(run_dir, recipe(run_dir)).release()  # the lock was let go


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_a_directory_not_even_root_may_write_is_refused_with_the_os_reason():
    # Tests run as root, so chmod blocks nothing; sysfs refuses mkdir to everyone.
    run_dir = Path("/sys/tunecli-run")
    with pytest.raises(TuneError) as e:
        rundir.acquire(run_dir, recipe(run_dir))
    assert str(e.value) == (
        f"trainer.default_local_dir = '{run_dir}': the run directory {run_dir} cannot be created or written "
        "(Operation not permitted). Fix: set trainer.default_local_dir to a directory you can write."
    )


# ---------------------------------------------------------------------------------------------
# Through the trainer: all of it before the model loads
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Stop the trainer where the model would load (a TuneError it prints and exits 1 on)."""
    import tunecli.trainer.loop as loop

    def refuse(*args, **kwargs):
        raise TuneError("MODEL WOULD LOAD NOW")

    monkeypatch.setattr(loop, "load_policy", refuse)


def _train(tmp_path: Path, run_dir: Path, *flags: str) -> int:
    from tunecli.train import train

    config = tmp_path / "r.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"default_local_dir": str(run_dir), "num_threads": 1}}))
    return train(str(config), [], no_resume="--no-resume" in flags, overwrite="--overwrite" in flags,
                 break_lock="--break-lock" in flags, command=["tune", "train", *flags])


@pytest.mark.parametrize("flags", [("--no-resume",), ("--no-resume", "--overwrite"), ("--overwrite",), ()])
def test_trainer_starts_over_before_the_model_loads(tmp_path, capsys, no_model, flags):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _old_run(run_dir, "old")
    assert _train(tmp_path, run_dir, *flags) == 1
    out = capsys.readouterr()
    assert "MODEL WOULD LOAD NOW" in out.err
    assert not (run_dir / rundir.LOCK_NAME).exists()  # released on the way out
    if not flags:  # resuming: the old run stays where it is
        assert (run_dir / "metrics.jsonl").is_file() and not (tmp_path / "run.1").exists()
    elif "--overwrite" in flags:
        assert list(run_dir.iterdir()) == [] and not (tmp_path / "run.1").exists()
    else:
        assert list(run_dir.iterdir()) == [] and (tmp_path / "run.1" / "checkpoints" / "step_2").is_dir()
        assert f"moved to {tmp_path / 'run.1'}" in flat(out.out)


def test_trainer_refuses_a_busy_or_unwritable_dir_before_the_model_loads(tmp_path, capsys, no_model, holder):
    busy = tmp_path / "busy"
    owner = holder(busy)
    _old_run(busy, "the owner's")
    assert _train(tmp_path, busy, "--no-resume", "--overwrite") == 1
    err = flat(capsys.readouterr().err)
    assert f"in use by pid {owner.pid}" in err and "MODEL WOULD LOAD NOW" not in err and "Traceback" not in err
    assert (busy / "metrics.jsonl").is_file() and (busy / "checkpoints" / "step_2").is_dir()  # untouched
    (tmp_path / "file").write_text("")
    assert _train(tmp_path, tmp_path / "file" / "run") == 1
    err = flat(capsys.readouterr().err)
    assert "trainer.default_local_dir" in err and "Not a directory" in err and "MODEL WOULD LOAD NOW" not in err


def test_trainer_resumes_after_a_sigkill_without_a_flag(tmp_path, capsys, no_model, holder):
    run_dir = tmp_path / "run"
    owner = holder(run_dir)
    _old_run(run_dir, "killed")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert _train(tmp_path, run_dir) == 1
    out = capsys.readouterr()
    assert "MODEL WOULD LOAD NOW" in out.err  # got past the lock
    assert f"locked by pid {owner.pid}" in flat(out.err) and "which is gone" in flat(out.err)
    assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / rundir.LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------------

# Blocks each call until the test creates GO: the first run is surely running while the second starts.
WAITING_REWARD = """
import time
from pathlib import Path

GO = Path(__file__).with_name("go")

def reward(prompt, completion, ground_truth, **kwargs):
    deadline = time.time() + 300
    while not GO.exists() and time.time() < deadline:
        time.sleep(0.05)
    return min(len(completion), 40) / 40.0
"""


@pytest.mark.slow
def test_two_runs_with_one_name_second_refused_first_untouched(tmp_path, tiny_model_dir):
    (tmp_path / "reward.py").write_text(WAITING_REWARD)
    steps = 2
    r = small_recipe(tiny_model_dir, "same", launch={"n_gpus_per_node": 1, "strategy": "none"},
                     reward={"function": f"{tmp_path / 'reward.py'}:reward", "timeout_s": 600},
                     trainer={"total_training_steps": steps})
    config, _ = write_recipe(r, tmp_path)
    cmd = [sys.executable, "-m", "tunecli.train", "--config", str(config)]
    env = worker_env(COLUMNS="300")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock_file = tmp_path / "runs" / "same" / rundir.LOCK_NAME
        deadline = time.monotonic() + 120
        while not (lock_file.is_file() and lock_file.read_text()):  # poll for the lock, not a fixed sleep
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first run took no lock within 120 s"
            time.sleep(0.05)
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # still running when the second gave up
        (tmp_path / "go").touch()
        out, err = first.communicate(timeout=240)
    finally:
        (tmp_path / "go").touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    message = flat(second.stderr)
    assert f"runs/same is in use by pid {first.pid} on host {socket.gethostname()} since" in message
    assert "Wait for it, stop it, or give this run another trainer.experiment_name" in message
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, err[-3000:]
    assert sorted(read_metrics(tmp_path / "runs" / "same")) == list(range(1, steps + 1))
    lines = (tmp_path / "runs" / "same" / "metrics.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if '"timing/step_s"' in ln]) == steps  # each step exactly once
    assert not lock_file.exists()


@pytest.mark.slow
def test_tune_run_shows_the_unwritable_run_dir_paragraph(tmp_path, tiny_model_dir):
    (tmp_path / "blocked").write_text("a file where the run directory should go")
    run_dir = tmp_path / "blocked" / "run"
    r = small_recipe(tiny_model_dir, "unwritable", launch={"n_gpus_per_node": 1, "strategy": "none"},
                     trainer={"default_local_dir": str(run_dir)})
    _, script = write_recipe(r, tmp_path)
    result = subprocess.run(tune_cmd("run", str(script)), cwd=tmp_path, env=worker_env(COLUMNS="300"),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    message = flat(result.stderr)
    assert f"trainer.default_local_dir = '{run_dir}': the run directory {run_dir} cannot be created or written" in message
    assert f"{tmp_path / 'blocked'} is a file, not a directory" in message
    assert "Traceback" not in result.stdout + result.stderr and "Stopped" not in result.stdout
