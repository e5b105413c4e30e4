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

from tunecli import console

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
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.total = total_steps
        self.history: list[dict[str, Any]] = []
        self.progress = None
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
            console=console.out,  # the product's console: lines never fold when sent to a file
        )
        self.task = self.progress.add_task("", total=total_steps, completed=start_step)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint (they are re-run); a fresh run starts empty."""
        if not self.path.is_file():
            return
        if step == 0:  # step 0 is re-run whole (validation included)
            self.path.unlink()
            return
        finished = step == self.total  # a finished run started again runs its final validation again
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            at = record.get("step", 0)
            if at < step or (at == step and not (finished and "val/acc" in record)):
                kept.append(record)
        self.history = kept
        # A new file renamed over the old one: a kill mid-rewrite leaves the old lines or the new, whole.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def __enter__(self) -> MetricsLogger:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def log(self, step: int, metrics: dict[str, float], show: bool = True) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: round(float(v), 6) for k, v in metrics.items()}}
        self.history.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if show and self.progress:
            self.progress.update(self.task, completed=step, description="")
            self.progress.console.print(live_line(step, self.total, metrics), highlight=False, soft_wrap=True)

    def print(self, text) -> None:
        if self.progress:  # the main rank's
            self.progress.console.print(text, highlight=False)

    # -- end of run -----------------------------------------------------------------------------
    def summary_rows(self, extra: dict[str, str]) -> list[list[str]]:
        train = [r for r in self.history if "reward/mean" in r]
        val = [r for r in self.history if "val/acc" in r]
        rows = []
        if train:
            first, last = train[0], train[-1]
            rows.append(["train reward (first -> last step)", f"{first['reward/mean']:.3f} -> {last['reward/mean']:.3f}"])
        if val:
            rows.append(["held-out accuracy (first -> last)", f"{val[0]['val/acc']:.3f} -> {val[-1]['val/acc']:.3f}"])
        if train:
            mean = lambda k: sum(r.get(k, 0.0) for r in train) / len(train)  # noqa: E731
            rows.append(["mean step time", f"{mean('timing/step_s'):.1f} s (rollout {mean('timing/rollout_s'):.1f} s, train {mean('timing/train_s'):.1f} s)"])
            rows.append(["mean generated tokens/s", f"{mean('perf/tokens_per_s'):.0f}"])
        rows += [[k, v] for k, v in extra.items()]
        return rows

    def write_summary(self, name: str, run_dir: Path, *, peak_gib: float, steps: int) -> None:
        """The end-of-run table on the console, reward.png and summary.json (main rank only)."""
        if not self.enabled:
            return
        from rich.table import Table

        plot = self.plot(run_dir / "reward.png")
        extra = {"peak memory (RSS, all processes)": f"{peak_gib:.2f} GiB", "run directory": str(run_dir)}
        if plot:
            extra["reward curve"] = str(plot)
        table = Table(title=f"GRPO run summary: {name}", show_header=False)
        table.add_column("")
        table.add_column("")
        rows = self.summary_rows(extra)
        for row in rows:
            table.add_row(*row)
        self.print(table)
        summary = {r[0]: r[1] for r in rows} | {"peak_rss_gib": round(peak_gib, 3), "steps": steps}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))

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


def now() -> float:
    return time.perf_counter()
