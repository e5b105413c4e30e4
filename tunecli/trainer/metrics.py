"""What a run shows and keeps: a rich progress bar with a live line, metrics.jsonl, a summary, reward.png.

Only the main rank writes; other ranks get a silent logger. Peak memory is sampled over this process
and its children (psutil) by a background thread; ranks add theirs up in the trainer. An update's
metrics are averaged by ``UpdateAverages``, per optimizer step or per micro-batch as each is declared.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tunecli import console as product_console
from tunecli.trainer import summary

GIB = 1024**3


class PeakMemory:
    """Peak RSS of this process plus its children, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.25):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def sample(self) -> int:
        proc = psutil.Process()
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        return total

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sample()

    def start(self) -> PeakMemory:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class UpdateAverages:
    """The metrics of one step's policy update, each averaged the way its caller declares:

    ``add_per_update``: values that add up within one optimizer step (micro-batch shares of the
    mini-batch loss, the step's gradient norm), averaged over optimizer steps;
    ``add_per_micro_batch``: one value per micro-batch (fractions of its tokens, such as the clipped
    ones), averaged over micro-batches.
    """

    def __init__(self) -> None:
        self._per_update: dict[str, float] = {}
        self._per_micro_batch: dict[str, float] = {}
        self.updates = 0
        self.micro_batches = 0

    def add_per_update(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self._per_update[k] = self._per_update.get(k, 0.0) + v

    def add_per_micro_batch(self, values: dict[str, float]) -> None:
        self.micro_batches += 1
        for k, v in values.items():
            self._per_micro_batch[k] = self._per_micro_batch.get(k, 0.0) + v

    def end_update(self) -> None:
        """One optimizer step is done."""
        self.updates += 1

    def means(self) -> dict[str, float]:
        out = {k: v / max(self.updates, 1) for k, v in self._per_update.items()}
        out.update({k: v / max(self.micro_batches, 1) for k, v in self._per_micro_batch.items()})
        return out


def live_line(step: int, total: int, m: dict[str, float]) -> str:
    """The compact one-line view of a step."""

    def g(key: str, fmt: str = ".3f") -> str:
        return format(m[key], fmt) if key in m else "-"

    return (
        f"step {step}/{total} reward {g('reward/mean')}±{g('reward/std', '.2f')} acc {g('reward/acc', '.2f')} "
        f"kl {g('actor/kl', '.4f')} ent {g('actor/entropy', '.2f')} clip {g('actor/clip_frac', '.2f')} "
        f"len {g('response/length', '.1f')} {g('perf/tokens_per_s', '.0f')} tok/s "
        f"gen {g('timing/rollout_s', '.1f')}s train {g('timing/train_s', '.1f')}s"
    )


class MetricsLogger:
    """metrics.jsonl (always), the console's live line (``console``), the trackers of trainer.logger
    and completions.jsonl (trainer.log_completions): everything a step reports goes through ``log``."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True,
                 trackers: list[Any] | None = None, console: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.completions_path = Path(run_dir) / "completions.jsonl"
        self.total = total_steps
        self.history: list[dict[str, Any]] = []
        self.progress = None
        self.trackers = trackers or []
        self.console = console
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]GRPO"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            transient=False,
            console=product_console.out,  # the product's console: lines never fold when sent to a file
        )
        self.task = self.progress.add_task("", total=total_steps, completed=start_step)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint (they are re-run); a fresh run starts empty."""
        if step == 0:  # step 0 is re-run whole (validation included)
            for path in (self.path, self.completions_path):
                path.unlink(missing_ok=True)
            return
        finished = step == self.total  # a finished run started again runs its final validation again
        self.history = _rewrite_kept(self.path, lambda at, record: at < step or (
            at == step and not (finished and "val/acc" in record)))
        _rewrite_kept(self.completions_path, lambda at, record: at <= step)

    def __enter__(self) -> MetricsLogger:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def log(self, step: int, metrics: dict[str, float], show: bool = True) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: round(float(v), 6) for k, v in metrics.items()}}
        self.history.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for tracker in self.trackers:
            tracker.log(step, {k: v for k, v in record.items() if k != "step"})
        if show and self.progress and self.console:
            self.progress.update(self.task, completed=step, description="")
            self.progress.console.print(live_line(step, self.total, metrics), highlight=False, soft_wrap=True)

    def log_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        """A step's sample completions: completions.jsonl, and a table in each tracker."""
        if not self.enabled or not rows:
            return
        rows = [{"step": step, **row} for row in rows]
        with self.completions_path.open("a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
        for tracker in self.trackers:
            tracker.table(step, rows)

    def print(self, text) -> None:
        if self.progress:  # the main rank's
            self.progress.console.print(text, highlight=False)

    # -- end of run -----------------------------------------------------------------------------
    def write_summary(self, name: str, run_dir: Path, *, peak_gib: float, steps: int) -> dict[str, Any] | None:
        """summary.json (numbers with units), the same numbers as a table on the console, reward.png."""
        if not self.enabled:
            return None
        from rich.table import Table

        plot = self.plot(run_dir / "reward.png")
        files = {"run directory": str(run_dir), **({"reward curve": str(plot)} if plot else {})}
        numbers = summary.summarize(self.history, steps=steps, peak_gib=peak_gib)
        table = Table(title=f"GRPO run summary: {name}", show_header=False)
        table.add_column("")
        table.add_column("")
        for row in summary.summary_rows(numbers, files):
            table.add_row(*row)
        self.print(table)
        record = summary.summary_json(name, str(run_dir), numbers, files)
        (run_dir / "summary.json").write_text(json.dumps(record, indent=2))
        return record

    def plot(self, out: Path) -> Path | None:
        """reward.png: train reward per step and held-out accuracy."""
        train = [r for r in self.history if "reward/mean" in r]
        val = [r for r in self.history if "val/acc" in r]
        if not (train or val):
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot([r["step"] for r in train], [r["reward/mean"] for r in train], label="train reward (mean)", alpha=0.8)
        if val:
            ax.plot([r["step"] for r in val], [r["val/acc"] for r in val], "o-", label="held-out accuracy (greedy)")
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02) if all(0 <= r.get("reward/mean", 0) <= 1 for r in train) else None
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def _rewrite_kept(path: Path, keep) -> list[dict[str, Any]]:
    """Keep the JSON lines of ``path`` for which ``keep(step, record)``; a line cut short by a kill is dropped."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if keep(record.get("step", 0), record):
            kept.append(record)
    # A new file renamed over the old one: a kill mid-rewrite leaves the old lines or the new, whole.
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return kept


def now() -> float:
    return time.perf_counter()
