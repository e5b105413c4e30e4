"""The GPU check's steps (run by benchmarks/gpu_check.sh after it installed the gpu extra).

1. CUDA: torch sees the GPUs, vLLM imports.
2. Weight sync: vLLM on CUDA serves the weights it is sent (tests/test_vllm_engine.py, full weights and
   a merged LoRA adapter: greedy output changes and equals transformers'). A skipped test is a failure.
3. Recipe: `tune new --preset 0.5B LoRA` for this machine's GPUs, and `tune new`'s memory estimate.
4. Train: `tune run` for --steps steps (torchrun with nccl from 2 GPUs on), while nvidia-smi is
   sampled for the peak memory of every process on the GPUs.
5. Metrics: every step logged; median step time (the first step, with warm-up, left out).

Every step runs even after a failure where it can, then one table is printed; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GiB = 1024**3
STAGE_TIMEOUT_S = 600
TUNE = [sys.executable, "-c", "from tunecli.cli import main; main()"]  # this interpreter's tunecli


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (part, PASS|FAIL|INFO, detail)
    failures: list[str] = field(default_factory=list)  # the output that explains each failure

    def add(self, part: str, ok: bool | None, detail: str, output: str = "") -> None:
        self.rows.append((part, "INFO" if ok is None else "PASS" if ok else "FAIL", detail))
        if ok is False and output:
            self.failures.append(f"--- {part}\n{output[-4000:]}")

    @property
    def ok(self) -> bool:
        return all(status != "FAIL" for _, status, _ in self.rows)

    def table(self) -> str:
        width = max(len(r[0]) for r in self.rows)
        lines = [f"{'part'.ljust(width)}  result  detail", f"{'-' * width}  ------  ------"]
        lines += [f"{part.ljust(width)}  {status.ljust(6)}  {detail}" for part, status, detail in self.rows]
        return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GPU check (see benchmarks/gpu_check.sh).")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--gpus", type=int, default=None, help="GPUs to train on (default: all visible)")
    p.add_argument("--model", default=None, help="local model directory or hub id (default: the preset's)")
    p.add_argument("--preset", default="qwen2.5-0.5b_grpo-lora_1_h100_fsdp_vllm")
    p.add_argument("--workdir", type=Path, default=REPO / "gpu_check")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.steps < 1 or (args.gpus is not None and args.gpus < 1):
        p.error("--steps and --gpus must be >= 1")
    return args


def _run(cmd: list[str], *, cwd: Path, timeout: float = STAGE_TIMEOUT_S) -> tuple[int, str]:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, f"timed out after {timeout:.0f} s\n{out}"


def check_cuda(report: Report) -> int:
    """The number of GPUs torch sees (0: the rest cannot run)."""
    import torch

    if not torch.cuda.is_available():
        report.add("cuda", False, f"torch {torch.__version__} cannot use CUDA (a CPU build, or a driver mismatch)",
                   f"torch.version.cuda={torch.version.cuda}")
        return 0
    try:
        import vllm

        vllm_version = vllm.__version__
    except Exception as e:  # a broken vLLM install is a failure of this check, not a skip
        report.add("cuda", False, f"vllm does not import: {e}", repr(e))
        return 0
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    report.add("cuda", True, f"{torch.cuda.device_count()} x {', '.join(sorted(names))}; torch {torch.__version__} "
               f"(CUDA {torch.version.cuda}), vllm {vllm_version}")
    return torch.cuda.device_count()


def check_sync(report: Report) -> None:
    tests = "full_weight_sync or lora_merge_sync"
    code, out = _run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                      "tests/test_vllm_engine.py", "-k", tests], cwd=REPO)
    ok = code == 0 and "2 passed" in out and "skipped" not in out
    report.add("weight sync (vLLM on CUDA)", ok, "greedy output changes after a sync and equals transformers' "
               "(full weights, merged LoRA)" if ok else f"pytest exit {code}", out)


def write_recipe(args: argparse.Namespace, gpus: int, report: Report) -> Path | None:
    sets = {"trainer.total_training_steps": args.steps, "trainer.val_before_train": "false", "trainer.save_freq": -1,
            "trainer.default_local_dir": str(args.workdir / "runs" / "gpu_check"), "data.dataset": "arithmetic",
            "data.train_batch_size": gpus, "actor.ppo_mini_batch_size": gpus}
    cmd = [*TUNE, "new", "--preset", args.preset, "--name", "gpu_check", "--out", str(args.workdir / "generated"),
            "--gpus", str(gpus), "--yes", "--force"]
    if args.model:
        cmd += ["--model", args.model]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    for extra in args.sets:
        cmd += ["--set", extra]
    code, out = _run(cmd, cwd=REPO, timeout=120)
    script = args.workdir / "generated" / "gpu_check.sh"
    report.add("recipe (tune new)", code == 0 and script.is_file(), f"{args.preset} on {gpus} GPU(s), {args.steps} steps",
               out)
    return script if code == 0 and script.is_file() else None


def memory_estimate_gib(yaml_path: Path) -> float | None:
    """`tune new`'s estimated peak per GPU for the recipe as written."""
    from tunecli.authoring.checks import check_recipe
    from tunecli.config.io import read_recipe_file

    report = check_recipe(read_recipe_file(yaml_path).recipe([]))
    return report.memory.peak / GiB if report.memory is not None else None


class GpuMemorySampler:
    """The largest memory.used of any GPU, sampled by nvidia-smi every half second (all processes)."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "GpuMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max([self.peak_mib, *(int(v) for v in out.split() if v.isdigit())])
            except (OSError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.5)


def train(args: argparse.Namespace, script: Path, report: Report) -> float | None:
    """`tune run` the recipe; the peak GPU memory in GiB."""
    started = time.monotonic()
    with GpuMemorySampler() as sampler:
        code, out = _run([*TUNE, "run", str(script)], cwd=REPO)
    seconds = time.monotonic() - started
    report.add("train (tune run)", code == 0, f"exit {code} after {seconds:.0f} s (model load and vLLM start included)", out)
    (args.workdir / "tune_run.log").write_text(out)
    return sampler.peak_mib / 1024 if sampler.peak_mib else None


def check_metrics(args: argparse.Namespace, report: Report) -> dict:
    path = args.workdir / "runs" / "gpu_check" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    steps = [r for r in rows if "timing/step_s" in r]
    ok = sorted(r["step"] for r in steps) == list(range(1, args.steps + 1))
    timed = [r["timing/step_s"] for r in steps[1:]] or [r["timing/step_s"] for r in steps]
    result = {}
    if timed:
        median = statistics.median(timed)
        split = {k: statistics.median(r.get(f"timing/{k}_s", 0.0) for r in steps[1:] or steps) for k in ("rollout", "train", "sync")}
        result = {"step_s": median, **{f"{k}_s": v for k, v in split.items()}}
        detail = (f"{len(steps)} steps; median step {median:.2f} s (rollout {split['rollout']:.2f}, train "
                  f"{split['train']:.2f}, sync {split['sync']:.2f})")
    else:
        detail = f"no step in {path}"
    report.add("metrics", ok, detail, "\n".join(json.dumps(r) for r in rows[-5:]))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = Report()
    found = check_cuda(report)
    results: dict = {}
    if found:
        gpus = args.gpus or found
        if gpus > found:
            report.add("gpus", False, f"--gpus {gpus} but torch sees {found}")
        else:
            check_sync(report)
            script = write_recipe(args, gpus, report)
            if script is not None:
                estimate = memory_estimate_gib(script.with_suffix(".yaml"))
                peak = train(args, script, report)
                results = check_metrics(args, report)
                results.update(peak_gpu_gib=peak, estimate_gib=estimate, gpus=gpus)
                if peak is not None and estimate:
                    report.add("peak GPU memory", None, f"{peak:.1f} GiB measured (nvidia-smi, max over GPUs) vs "
                               f"{estimate:.1f} GiB estimated by `tune new` ({peak / estimate:.0%})")
                else:
                    report.add("peak GPU memory", False, f"measured {peak}, estimated {estimate}")
    (args.workdir / "gpu_check.json").write_text(json.dumps({"rows": report.rows, **results}, indent=1))
    for failure in report.failures:
        print(failure, file=sys.stderr)
    print("\nGPU check\n" + report.table())
    print(f"\n{'PASSED' if report.ok else 'FAILED'} (details: {args.workdir})")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
