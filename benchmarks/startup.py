"""Start-up of the quickstart trainer: from the process start to the end of ``Trainer.setup``.

    python benchmarks/startup.py              # 4 alternated pairs: the collector as shipped / untouched
    python benchmarks/startup.py --pairs 2

Each run is its own process with its imports, as a user's `tune train` pays them. "shipped" is tunecli as
it is: ``trainer/heap.py`` parks the automatic collector during setup and freezes what survives, so
neither the imports nor vLLM's own ``gc.collect()`` calls walk the long-lived objects again. "untouched"
hands ``heap`` a collector that leaves Python's defaults in place (no collection, no freezing, nothing
disabled): the trainer as it was before ``heap``. Printed per run: seconds to the end of setup, the full
(generation-2) collections during it and their seconds, and the child's peak memory.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the child's clock starts before its heavy imports

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import GIB, run_child  # noqa: E402

MODES = ("shipped", "untouched")


class FullCollections:
    """Counts generation-2 collections and their seconds (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count, self.seconds, self._start = 0, 0.0, 0.0
        gc.callbacks.append(self._on)

    def _on(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._start


def untouched_collector() -> types.SimpleNamespace:
    """What ``heap`` calls, as no-ops: the process keeps Python's default collector throughout."""
    return types.SimpleNamespace(collect=lambda *a: 0, freeze=lambda: None, unfreeze=lambda: None,
                                 disable=lambda: None, enable=lambda: None, isenabled=gc.isenabled)


def worker(mode: str) -> dict:
    collections = FullCollections()
    from tunecli.catalog import load_catalog
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer import heap
    from tunecli.trainer.loop import Trainer

    if mode == "untouched":
        heap.gc = untouched_collector()
    with tempfile.TemporaryDirectory(prefix="tunecli-startup-") as tmp:
        recipe = recipe_from_dict(load_catalog().preset("quickstart").recipe, [f"trainer.default_local_dir={tmp}/run"])
        trainer = Trainer(recipe, overwrite=True)
        try:
            trainer.setup()
            setup_s = time.perf_counter() - T0
            return {"mode": mode, "setup_s": setup_s, "full_collections": collections.count,
                    "full_collection_s": collections.seconds}
        finally:
            trainer.cleanup()


def table(runs: list[dict]) -> str:
    lines = ["| collector | setup s (each run) | median | full collections | their s (median) | peak RSS GiB |",
             "|---|---|---|---|---|---|"]
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        each = " / ".join(f"{r['setup_s']:.2f}" for r in mine)
        low, high = min(r["full_collections"] for r in mine), max(r["full_collections"] for r in mine)
        lines.append(f"| {mode} | {each} | {statistics.median(r['setup_s'] for r in mine):.2f} | "
                     f"{low if low == high else f'{low}-{high}'} | "
                     f"{statistics.median(r['full_collection_s'] for r in mine):.2f} | "
                     f"{max(r['peak_rss_gib'] for r in mine):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    runs = []
    with tempfile.TemporaryDirectory(prefix="tunecli-startup-logs-") as logs:
        for pair in range(args.pairs):
            for mode in MODES:
                runs.append(measure(mode, Path(logs) / f"{pair}-{mode}.log"))
    print(table(runs))


def measure(mode: str, log: Path) -> dict:
    """One child run of ``mode``, with the peak memory of its process tree."""
    child = run_child([sys.executable, __file__, "--worker", mode], log_path=log)
    lines = [line for line in child.output.splitlines() if line.startswith('{"mode"')]
    if child.returncode != 0 or not lines:
        raise SystemExit(f"{mode} run failed ({child.returncode}):\n{child.output[-3000:]}")
    run = {**json.loads(lines[-1]), "peak_rss_gib": child.peak_rss_bytes / GIB}
    print(f"{mode}: setup {run['setup_s']:.2f} s, {run['full_collections']} full collections "
          f"({run['full_collection_s']:.2f} s)", flush=True)
    return run


if __name__ == "__main__":
    main()
