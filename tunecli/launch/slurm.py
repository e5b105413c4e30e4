"""Talking to SLURM for `tune run` and `tune status`: submit with sbatch, find a job's log, read its state.

Only the SLURM commands every cluster has (sbatch, squeue, sacct, scontrol); their machine-readable
output (``--parsable``, ``-o``) is parsed, never their tables. A job's log is where the sbatch file
puts it (``config.paths.slurm_log``, relative to the directory sbatch ran in) unless scontrol knows
better.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunecli.config.paths import slurm_log
from tunecli.errors import TuneError

# squeue's states of a job that has not ended (everything else is an end state).
_ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STOPPED",
           "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
_PROGRESS = re.compile(r"^step \d+/\d+ ")
_LOG_NAME = re.compile(r"^(?P<name>.+)-(?P<job>\d+)\.log$")
QUERY_TIMEOUT_S = 30


@dataclass
class Submission:
    job_id: str
    log: Path


@dataclass
class JobStatus:
    job_id: str
    state: str  # RUNNING, PENDING, COMPLETED, CANCELLED, FAILED, TIMEOUT ... or UNKNOWN
    log: Path | None
    progress: str | None  # the trainer's last "step N/M ..." line in the log

    @property
    def active(self) -> bool:
        return self.state in _ACTIVE


def _query(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S,
                              env=env, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise TuneError(f"`{command[0]}` is not on this machine's PATH: run this on a SLURM login node.",
                        field="launch.launcher") from None
    except subprocess.TimeoutExpired:
        raise TuneError(f"`{' '.join(command)}` did not answer within {QUERY_TIMEOUT_S} s: is slurmctld reachable "
                        "(`scontrol ping`)?", field="launch.launcher") from None


def submit(command: list[str], env: dict[str, str], name: str) -> Submission:
    """Run ``sbatch SCRIPT ARGS`` (``command``) with ``--parsable``; the job id and the log it writes."""
    result = _query([command[0], "--parsable", *command[1:]], env)
    if result.returncode != 0:
        raise TuneError(f"sbatch refused the job (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}",
                        field="launch.launcher")
    # --parsable prints "JOBID" or "JOBID;CLUSTER"
    lines = result.stdout.strip().splitlines()
    job_id = lines[-1].split(";")[0] if lines else ""
    if not job_id.isdigit():
        raise TuneError(f"sbatch printed {result.stdout.strip()!r} where a job id was expected.", field="launch.launcher")
    return Submission(job_id, log_of(job_id, name, env))


def log_of(job_id: str, name: str | None, env: dict[str, str] | None = None) -> Path | None:
    """The job's StdOut as slurmctld knows it; else the sbatch file's own --output in this directory."""
    match = None
    if shutil.which("scontrol", path=(env or os.environ).get("PATH")):
        result = _query(["scontrol", "show", "job", "--oneliner", job_id], env)
        match = re.search(r"\bStdOut=(\S+)", result.stdout) if result.returncode == 0 else None
    if match:
        return Path(match.group(1))
    return Path(os.path.abspath(slurm_log(name, job_id))) if name else None


def job_state(job_id: str, env: dict[str, str] | None = None) -> str:
    """squeue while the job is queued or running; then sacct (the accounting database, or the job
    completion log where a cluster keeps no database)."""
    queued = _query(["squeue", "--noheader", "--jobs", job_id, "--format", "%T"], env)
    if queued.returncode == 0 and queued.stdout.strip():
        return queued.stdout.split()[0]
    for completion in ([], ["--completion"]):
        done = _query(["sacct", *completion, "--noheader", "--parsable2", "--allocations", "--jobs", job_id,
                       "--format", "State"], env)
        states = done.stdout.split() if done.returncode == 0 else []
        if states:
            return states[-1].split()[0]  # "CANCELLED by 0" -> CANCELLED
    return "UNKNOWN"


def last_progress(log: Path | None) -> str | None:
    """The trainer's last progress line ("step N/M reward ...") in a job's log."""
    if log is None or not log.is_file():
        return None
    found = None
    for line in _lines(log.read_text(errors="replace")):
        if _PROGRESS.match(line):
            found = line
    return found


def _lines(text: str) -> Iterator[str]:
    # Progress bars rewrite their line with \r: each piece counts as a line of its own.
    for line in text.splitlines():
        yield from (part.strip() for part in line.split("\r") if part.strip())


def latest_job(name: str, directory: Path) -> str | None:
    """The newest job of recipe ``name`` submitted from ``directory`` (by the logs it left there)."""
    jobs = [int(m.group("job")) for p in directory.glob(slurm_log(name, "*"))
            if (m := _LOG_NAME.match(p.name)) and m.group("name") == name]
    return str(max(jobs)) if jobs else None


def status(job_id: str, name: str | None, env: dict[str, str] | None = None) -> JobStatus:
    log = log_of(job_id, name, env)
    return JobStatus(job_id, job_state(job_id, env), log, last_progress(log))


def follow(job_id: str, name: str | None, show: Callable[[str], None], *, poll_s: float = 2.0,
           env: dict[str, str] | None = None) -> JobStatus:
    """Print each new progress line of the job's log until the job ends; its final status."""
    shown = None
    while True:
        current = status(job_id, name, env)
        if current.progress and current.progress != shown:
            show(current.progress)
            shown = current.progress
        if not current.active:
            return current
        time.sleep(poll_s)
