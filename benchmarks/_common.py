"""Shared pieces of the benchmarks: running a child with its peak memory, step statistics, tables.

Every measured run is its own child process, so its peak RSS (the whole process tree, sampled by
the parent) belongs to that run alone and one run's caches never warm the next.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

GIB = 1024**3


@dataclass
class ChildRun:
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    output: str
    timed_out: bool = False


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes (processes that vanish count 0)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_child(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float | None = None,
    log_path: Path | None = None,
    sample_every_s: float = 0.1,
) -> ChildRun:
    """Run ``cmd`` to completion, sampling the RSS of its process tree; output goes to ``log_path``."""
    log_path = log_path or Path(os.devnull)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        proc = psutil.Process(popen.pid)
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, tree_rss(proc))
                stop.wait(sample_every_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = False
        try:
            returncode = popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            # Kill the child's whole tree (it is ours: we started it), then report the timeout.
            for p in [*proc.children(recursive=True), proc]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            returncode = popen.wait()
        finally:
            stop.set()
            sampler.join()
    wall = time.perf_counter() - start
    output = Path(log_path).read_text(errors="replace") if log_path != Path(os.devnull) else ""
    return ChildRun(returncode=returncode, wall_s=wall, peak_rss_bytes=peak, output=output, timed_out=timed_out)


@dataclass
class StepStats:
    """Timed steps of one run (warm-up steps already dropped)."""

    step_s: list[float]
    generated_tokens: list[int]
    trained_tokens: list[int]
    extra: dict[str, list[float]] = field(default_factory=dict)  # optional phase split, e.g. rollout_s

    @property
    def median_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def min_s(self) -> float:
        return min(self.step_s)

    @property
    def max_s(self) -> float:
        return max(self.step_s)

    @property
    def generated_tok_per_s(self) -> float:
        return sum(self.generated_tokens) / sum(self.step_s)

    @property
    def trained_tok_per_s(self) -> float:
        return sum(self.trained_tokens) / sum(self.step_s)


def speedup(baseline_s: float, candidate_s: float) -> float:
    """How many times faster the candidate is than the baseline (median seconds per step)."""
    if candidate_s <= 0:
        raise ValueError("a step cannot take zero seconds")
    return baseline_s / candidate_s


def merge_stats(runs: list[StepStats]) -> StepStats:
    """Pool the timed steps of repeated runs of one contender."""
    extra: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r.extra.items():
            extra.setdefault(k, []).extend(v)
    return StepStats(
        step_s=[s for r in runs for s in r.step_s],
        generated_tokens=[t for r in runs for t in r.generated_tokens],
        trained_tokens=[t for r in runs for t in r.trained_tokens],
        extra=extra,
    )


def format_gib(n_bytes: int | float) -> str:
    return f"{n_bytes / GIB:.2f} GiB"


def comparison_rows(
    results: dict[str, tuple[StepStats, int]], baseline: str
) -> list[list[str]]:
    """Table rows: name, s/step median (min-max), generated tok/s, trained tok/s, peak RSS, speedup."""
    base = results[baseline][0].median_s if baseline in results else None
    rows = []
    for name, (stats, peak_rss) in results.items():
        ratio = f"{speedup(base, stats.median_s):.2f}x" if base else "-"
        rows.append(
            [
                name,
                f"{stats.median_s:.2f}",
                f"{stats.min_s:.2f} - {stats.max_s:.2f}",
                f"{stats.generated_tok_per_s:.0f}",
                f"{stats.trained_tok_per_s:.0f}",
                format_gib(peak_rss),
                ratio,
            ]
        )
    return rows


COMPARISON_HEADER = [
    "run",
    "s/step (median)",
    "s/step (min - max)",
    "generated tok/s",
    "trained tok/s",
    "peak RSS",
    "speedup vs TRL",
]


def print_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """Print a rich table and return the same table as GitHub markdown (for the README)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for h in header:
        table.add_column(escape(h), justify="left" if h == header[0] else "right")
    for r in rows:
        table.add_row(*(escape(c) for c in r))
    Console().print(table)
    return markdown_table(header, rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine_summary() -> str:
    """One line naming the CPU, its cores and memory, and the torch version."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = psutil.virtual_memory().total / GIB
    return f"{cpu}, {cores} cores, {mem:.0f} GiB RAM, torch {torch.__version__}"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ----------------------------------------------------------------------------- tunecli run directories


@dataclass
class StepFields:
    """What the benchmarks need from one metrics.jsonl line of `tune train`."""

    step_s: float
    rollout_s: float
    train_s: float  # update + weight sync
    generated_tokens: int
    sync_s: float = 0.0  # weight sync into the engine, when the trainer logs it (timing/sync_s)


def read_metrics(run_dir: Path) -> list[dict]:
    """Training-step lines of RUN_DIR/metrics.jsonl (validation lines dropped), in step order."""
    path = Path(run_dir)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: did the tunecli run finish a step?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted((r for r in rows if "timing/step_s" in r), key=lambda r: r["step"])


def step_fields(row: dict, samples_per_step: int) -> StepFields:
    """Step timings and generated tokens of one metrics line (mean response length x samples)."""
    return StepFields(
        step_s=float(row["timing/step_s"]),
        rollout_s=float(row["timing/rollout_s"]),
        train_s=float(row["timing/train_s"]),
        generated_tokens=round(float(row["response/length"]) * samples_per_step),
        sync_s=float(row.get("timing/sync_s", 0.0)),
    )


def prompt_token_counts(tokenizer, prompts: list[str], system_prompt: str | None = None) -> list[int]:
    """Tokens of each prompt after the chat template (what both trainers feed the model)."""
    counts = []
    for text in prompts:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": text})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        counts.append(len(tokenizer(rendered, add_special_tokens=False).input_ids))
    return counts
