"""SLURM end to end against a real one-machine cluster (munged, slurmctld, slurmd started here), plus
the pieces that need no cluster: the sbatch file's settings, reading a job's log, SIGTERM handling.

The cluster tests run `tune new --launcher slurm`, `tune run` (sbatch), `tune status`, `scancel` and a
resubmission exactly as a user would, with a tiny model on 2 CPU processes through `srun torchrun`.
They are skipped only where the SLURM packages are absent (CI installs them, see .ci/run).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import SlurmCluster, missing_reason  # noqa: E402
from torchrun_helpers import read_metrics, run, tune_cmd, worker_env  # noqa: E402

JOB_TIMEOUT_S = 240


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _new_recipe(tmp_path: Path, model: Path, steps: int) -> Path:
    """`tune new --launcher slurm`: the tiny model, 2 CPU processes (FSDP2), hf rollouts."""
    sets = {"trainer.total_training_steps": steps, "trainer.save_freq": -1, "trainer.val_before_train": "false",
            "data.train_size": 16, "data.val_size": 2, "data.train_batch_size": 4, "data.max_response_length": 6,
            "rollout.n": 2, "actor.ppo_mini_batch_size": 2, "actor.ppo_micro_batch_size_per_gpu": 2}
    args = ["new", "--preset", "quickstart-hf", "--launcher", "slurm", "--name", "sl", "--gpus", "2",
            "--strategy", "fsdp2", "--model", str(model), "--out", str(tmp_path / "generated"), "--yes"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    made = run(tune_cmd(*args), timeout=120, cwd=tmp_path, env=worker_env())
    assert made.returncode == 0, made.stdout[-3000:]
    assert "Submit it: tune run" in " ".join(made.stdout.split())
    script = tmp_path / "generated" / "sl.sh"
    assert "#SBATCH --signal=TERM@120" in script.read_text()
    return script


def _tune(cluster: SlurmCluster, cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run(tune_cmd(*args), timeout=timeout, cwd=cwd, env=worker_env(SLURM_CONF=str(cluster.conf), COLUMNS="300"))


def _submitted(out: str) -> tuple[str, Path]:
    match = re.search(r"Submitted SLURM job (\d+)\. Log: (\S+)", out)
    assert match, out[-3000:]
    return match.group(1), Path(match.group(2))


def _sacct(cluster: SlurmCluster, job_id: str) -> str:
    """The job's line in the cluster's job completion log (this cluster keeps no accounting database)."""
    result = subprocess.run(["sacct", "--completion", "--jobs", job_id, "--parsable2", "--noheader",
                             "--format", "JobID,JobName,State,ExitCode,Elapsed,Start,End,NodeList"],
                            capture_output=True, text=True, env=cluster.env, timeout=30)
    assert result.returncode == 0, result.stderr
    print(f"sacct: {result.stdout.strip()}")  # the record, in the test's output (pytest -s)
    return result.stdout.strip()


def _wait(condition, what: str, timeout: float = JOB_TIMEOUT_S, *, explain=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s\n{explain()}"
        time.sleep(0.2)


def _has_step(run_dir: Path) -> bool:
    try:
        return bool(read_metrics(run_dir))
    except (OSError, ValueError):  # not written yet, or a line half written
        return False


def _queued(cluster: SlurmCluster, job_id: str) -> bool:
    out = subprocess.run(["squeue", "--noheader", "--jobs", job_id], capture_output=True, text=True,
                         env=cluster.env, timeout=30).stdout
    return bool(out.strip())


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_job_trains_and_tune_status_follows_it(slurm_cluster, tiny_model_dir, tmp_path):
    """`tune run --follow` on a SLURM recipe: sbatch, job id and log printed, 2 steps through `srun
    torchrun` on 2 processes, progress followed to the end; sacct and `tune status` show it finished."""
    script = _new_recipe(tmp_path, tiny_model_dir, steps=2)
    result = _tune(slurm_cluster, tmp_path, "run", str(script), "--follow", timeout=JOB_TIMEOUT_S)
    job_id, log = _submitted(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + (log.read_text()[-3000:] if log.is_file() else "")
    assert log == tmp_path / f"sl-{job_id}.log"
    assert "step 2/2 reward" in result.stdout and f"Job {job_id}: COMPLETED" in result.stdout
    assert "|sl|COMPLETED|0:0|" in _sacct(slurm_cluster, job_id)
    assert not _queued(slurm_cluster, job_id)
    run_dir = tmp_path / "runs" / "sl"
    assert sorted(read_metrics(run_dir)) == [1, 2]
    assert (run_dir / "checkpoints" / "step_2" / "manifest.json").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints" / "step_2").glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]

    status = _tune(slurm_cluster, tmp_path, "status", "sl")
    assert status.returncode == 0, status.stdout
    assert f"Job {job_id}: COMPLETED. Log: {log}" in status.stdout
    assert re.search(r"^step 2/2 reward .* tok/s gen [\d.]+s train [\d.]+s$", status.stdout, re.M), status.stdout


@pytest.mark.slow
@pytest.mark.slurm
def test_scancel_checkpoints_and_resubmitting_resumes(slurm_cluster, tiny_model_dir, tmp_path):
    """`scancel` (SIGTERM to every process of the job, as at the time limit) lets the trainer write a
    checkpoint; `tune run` again submits a job that resumes from it and finishes."""
    steps = 12  # enough that the job is still training when scancel lands
    script = _new_recipe(tmp_path, tiny_model_dir, steps=steps)
    first = _tune(slurm_cluster, tmp_path, "run", str(script))
    assert first.returncode == 0, first.stdout[-3000:]
    job_id, log = _submitted(first.stdout)
    assert "tune status sl" in first.stdout
    run_dir = tmp_path / "runs" / "sl"
    _wait(lambda: _has_step(run_dir), "training step", explain=lambda: log.read_text()[-3000:] if log.is_file() else "")
    subprocess.run(["scancel", job_id], check=True, env=slurm_cluster.env, timeout=30)
    _wait(lambda: not _queued(slurm_cluster, job_id), "end of the cancelled job")
    assert "|sl|CANCELLED|" in _sacct(slurm_cluster, job_id)
    text = log.read_text()
    stopped = re.search(rf"Interrupted at step (\d+)/{steps}\. Checkpoint: runs/sl/checkpoints/step_(\d+)", text)
    assert stopped, text[-3000:]
    stopped_at = int(stopped.group(1))
    assert 1 <= stopped_at < steps
    assert (run_dir / "checkpoints" / f"step_{stopped_at}" / "manifest.json").is_file()

    again = _tune(slurm_cluster, tmp_path, "run", str(script), "--follow", timeout=JOB_TIMEOUT_S)
    second_id, second_log = _submitted(again.stdout)
    assert again.returncode == 0, again.stdout[-3000:] + second_log.read_text()[-3000:]
    assert f"Resumed from runs/sl/checkpoints/step_{stopped_at} (step {stopped_at}/{steps})" in second_log.read_text()
    assert "|sl|COMPLETED|0:0|" in _sacct(slurm_cluster, second_id)
    assert sorted(read_metrics(run_dir)) == list(range(1, steps + 1))


# --- without a cluster -------------------------------------------------------------------------------


def test_repeated_sigterm_still_stops_with_a_checkpoint():
    """SLURM signals every process of a step and torchrun passes SIGTERM on again: a second SIGTERM
    must not become "quit without saving" (only a second Ctrl-C does)."""
    from tunecli.trainer.stopping import StopRules

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rules = StopRules(None)
        rules.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # no KeyboardInterrupt
        assert rules.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a person pressing Ctrl-C while it stops
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_sbatch_file_signals_requeues_and_names_its_log(tmp_path):
    from tunecli.authoring import render
    from torchrun_helpers import small_recipe

    recipe = small_recipe(tmp_path, "sj", launch={"launcher": "slurm", "n_gpus_per_node": 2})
    _, script = render.write_files(render.render(recipe, out_dir=tmp_path), tmp_path)
    text = script.read_text()
    for line in ("#SBATCH --signal=TERM@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --output=sj-%j.log", "#SBATCH --cpus-per-task=2"):
        assert f"\n{line}\n" in text
    assert "--standalone" in text and "29500" not in text  # one node: no fixed rendezvous port
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_progress_line_and_latest_job_come_from_the_logs(tmp_path):
    from tunecli.launch import slurm

    log = tmp_path / "sl-12.log"
    log.write_text("Loading weights: 0%\rLoading weights: 100%\n"
                   "step 1/4 reward 0.1 tok/s gen 0.1s train 1.0s\n"
                   "GRPO ━━ 1/4\rstep 2/4 reward 0.2 tok/s gen 0.1s train 0.9s\nvalidation @ step 2\n")
    (tmp_path / "sl-9.log").write_text("")
    (tmp_path / "sl-extra-30.log").write_text("")  # another recipe's log
    assert slurm.last_progress(log) == "step 2/4 reward 0.2 tok/s gen 0.1s train 0.9s"
    assert slurm.last_progress(tmp_path / "missing.log") is None
    assert slurm.latest_job("sl", tmp_path) == "12"
    assert slurm.latest_job("other", tmp_path) is None


def test_tune_status_without_a_log_explains(tmp_path, monkeypatch):
    from recipe_testutil import flat, tune

    monkeypatch.chdir(tmp_path)
    result = tune("status", "generated/sl.sh")
    assert result.exit_code == 1
    assert "No SLURM log of recipe 'sl'" in flat(result.output) and "pass the job id" in flat(result.output)


def test_follow_on_a_local_recipe_says_it_runs_here(tmp_path, monkeypatch, tiny_model_dir):
    from recipe_testutil import flat, tune
    from torchrun_helpers import small_recipe, write_recipe

    monkeypatch.chdir(tmp_path)
    _, script = write_recipe(small_recipe(tiny_model_dir, "loc", launch={"n_gpus_per_node": 1, "strategy": "none"}), tmp_path)
    result = tune("run", script, "--follow", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "--follow is for SLURM recipes" in flat(result.output)
