"""The end-of-run summary: numbers with units in summary.json, and the same numbers as a table."""

from __future__ import annotations

from typing import Any

# key in summary.json -> (label on the console, unit); units also go into summary.json["units"].
FIELDS = {
    "steps": ("steps trained", "steps"),
    "train_reward_first": ("train reward, first step", "reward"),
    "train_reward_last": ("train reward, last step", "reward"),
    "val_acc_first": ("held-out accuracy, first", "fraction"),
    "val_acc_last": ("held-out accuracy, last", "fraction"),
    "mean_step_s": ("mean step time", "s"),
    "mean_rollout_s": ("mean rollout time", "s"),
    "mean_train_s": ("mean train time", "s"),
    "mean_reward_s": ("mean reward time", "s"),
    "tokens_per_s": ("mean generated tokens/s", "tokens/s"),
    "peak_rss_gib": ("peak memory (RSS, all processes)", "GiB"),
}


def summarize(history: list[dict[str, Any]], *, steps: int, peak_gib: float) -> dict[str, float]:
    """The run's numbers from its metrics records; a number that was never measured is left out."""
    train = [r for r in history if "reward/mean" in r]
    val = [r for r in history if "val/acc" in r]
    out: dict[str, float] = {"steps": steps}
    if train:
        out["train_reward_first"], out["train_reward_last"] = train[0]["reward/mean"], train[-1]["reward/mean"]
    if val:
        out["val_acc_first"], out["val_acc_last"] = val[0]["val/acc"], val[-1]["val/acc"]
    for key, metric in (("mean_step_s", "timing/step_s"), ("mean_rollout_s", "timing/rollout_s"),
                        ("mean_train_s", "timing/train_s"), ("mean_reward_s", "timing/reward_s"),
                        ("tokens_per_s", "perf/tokens_per_s")):
        values = [r[metric] for r in train if metric in r]
        if values:
            out[key] = round(sum(values) / len(values), 6)
    out["peak_rss_gib"] = round(peak_gib, 3)
    return out


def summary_json(name: str, run_dir: str, numbers: dict[str, float], files: dict[str, str]) -> dict[str, Any]:
    """What summary.json holds: the numbers at the top level, their units, the recipe and the files."""
    return {"recipe": name, **numbers, "units": {k: FIELDS[k][1] for k in numbers}, "run_dir": run_dir, "files": files}


def summary_rows(numbers: dict[str, float], files: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value with unit) per number, then the files: the console table of summary.json."""
    rows = []
    for key, value in numbers.items():
        label, unit = FIELDS[key]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        rows.append((label, shown if unit in ("reward", "fraction", "steps") else f"{shown} {unit}"))
    return rows + list(files.items())
