"""Would compiling the training passes pay? The quickstart's policy update, eager against regional torch.compile.

    python benchmarks/compile_update.py              # eager, then compiled, each in its own process
    python benchmarks/compile_update.py --updates 12
    python benchmarks/compile_update.py --profile    # eager only: where an update's time goes (torch.profiler)
    python benchmarks/compile_update.py --micro 16 32 --pairs 5   # eager, per micro-batch size, alternated

Regional compilation, as ``actor.use_torch_compile`` does it (``distributed.compile_decoder_layers``,
torchtune's ``compile_model``): each decoder layer is compiled on its own (``layer.compile(dynamic=True)``,
inductor), so the 30 layers share one compiled graph and the ever-changing batch shapes of GRPO do
not recompile (one more graph for a micro-batch of a single group: 0/1 specialisation). Both sides run the trainer's own ``_update``
(the quickstart's recipe: LoRA r16, compute dtype auto) on the same random rollouts shaped like the
quickstart's (4 prompts x 8 samples, 40-50 prompt and 4-12 response tokens, every sample trained).
Printed: the first update (it compiles), the median of the rest, and how many updates the compile
time takes to pay back.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time


def rollouts(count: int, seed: int = 0) -> list:
    from tunecli.trainer.rollout import Rollout

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        prompts = [[rng.randrange(1000, 20000) for _ in range(rng.randint(40, 50))] for _ in range(4)]
        responses = [[rng.randrange(1000, 20000) for _ in range(rng.randint(4, 12))] for _ in range(32)]
        out.append(Rollout(prompt_ids=[prompts[i // 8] for i in range(32)], response_ids=responses,
                           finished=[True] * 32, group_size=8))
    return out


def quickstart_trainer(threads: int, micro: int | None = None):
    import torch

    from tunecli.catalog import load_catalog
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer import distributed
    from tunecli.trainer.loop import Trainer
    from tunecli.trainer.precision import resolve_compute_dtype

    micro_override = [f"actor.ppo_micro_batch_size_per_gpu={micro}"] if micro else []  # None: the preset's
    recipe = recipe_from_dict(load_catalog().preset("quickstart").recipe, [f"trainer.num_threads={threads}", *micro_override])
    trainer = Trainer(recipe)
    trainer.dist = distributed.init("cpu")
    trainer.compute = resolve_compute_dtype(recipe.actor.compute_dtype, trainer.dist.device, distributed.all_reduce_sum)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    trainer._setup_model()
    trainer.total_steps = 1000
    trainer._setup_optimizer()
    return trainer


def timed_update(trainer, rollout) -> float:
    """Seconds of one trainer ``_update`` on ``rollout``, every sample trained, as the trainer casts for it."""
    import torch

    advantages, active = torch.randn(len(rollout)), torch.ones(len(rollout), dtype=torch.bool)
    start = time.perf_counter()
    with trainer.policy.cast_for_compute(trainer.compute.dtype):
        trainer._update(rollout, advantages, active)
    return time.perf_counter() - start


def worker(mode: str, updates: int, threads: int, micro: int | None = None) -> None:
    from tunecli.trainer.distributed import compile_decoder_layers

    trainer = quickstart_trainer(threads, micro)
    if mode == "compiled":
        compile_decoder_layers(trainer.policy.model)  # what actor.use_torch_compile does
    seconds = [timed_update(trainer, rollout) for rollout in rollouts(updates)]
    print(json.dumps({"mode": mode, "compute": trainer.compute.dtype, "micro": trainer.recipe.actor.ppo_micro_batch_size_per_gpu,
                      "seconds": seconds}))


def run_worker(mode: str, updates: int, threads: int, micro: int | None = None) -> dict:
    """One ``worker`` in its own process (torch.compile and thread pools do not carry over), its JSON result."""
    command = [sys.executable, __file__, "--worker", mode, "--updates", str(updates), "--threads", str(threads)]
    done = subprocess.run([*command, *(["--micro", str(micro)] if micro else [])], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_micro_batches(sizes: list[int], pairs: int, updates: int, threads: int) -> None:
    """Eager updates per micro-batch size (samples per forward/backward), the sizes alternated ``pairs`` times."""
    medians: dict[int, list[float]] = {m: [] for m in sizes}
    for _ in range(pairs):
        for micro in sizes:
            medians[micro].append(statistics.median(run_worker("eager", updates, threads, micro)["seconds"][1:]))
    print(f"{updates} updates per run (median of updates 2-{updates}), {threads} threads")
    print(micro_table(medians))


def micro_table(medians: dict[int, list[float]]) -> str:
    lines = ["| micro-batch (samples) | median update s, run by run | median of the runs |", "|---|---|---|"]
    lines += [f"| {micro} | {' / '.join(f'{s:.2f}' for s in runs)} | {statistics.median(runs):.2f} |" for micro, runs in medians.items()]
    return "\n".join(lines)


def profile(updates: int, threads: int) -> None:
    """Eager updates under torch.profiler: the ops taking the most time, and the matmuls' share."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer = quickstart_trainer(threads)
    batches = rollouts(updates + 1)
    timed_update(trainer, batches[0])  # warm-up, not profiled
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for rollout in batches[1:]:
            timed_update(trainer, rollout)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmuls = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::bmm", "aten::addmm"))
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"{updates} updates, compute dtype {trainer.compute.dtype}: matmuls (mm, bmm, addmm) {matmuls / total:.0%} of the ops' own time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="Profile eager updates instead of comparing.")
    parser.add_argument("--micro", type=int, nargs="+", metavar="N",
                        help="Eager only: compare these micro-batch sizes (actor.ppo_micro_batch_size_per_gpu).")
    parser.add_argument("--pairs", type=int, default=3, help="With --micro: how many times the sizes alternate.")
    parser.add_argument("--worker", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        profile(args.updates, args.threads)
        return
    if args.worker:
        worker(args.worker, args.updates, args.threads, args.micro[0] if args.micro else None)
        return
    if args.micro:
        compare_micro_batches(args.micro, args.pairs, args.updates, args.threads)
        return
    results = {mode: run_worker(mode, args.updates, args.threads) for mode in ("eager", "compiled")}
    eager, compiled = (statistics.median(results[m]["seconds"][1:]) for m in ("eager", "compiled"))
    first = results["compiled"]["seconds"][0]
    print(f"compute dtype {results['eager']['compute']}, {args.updates} updates each, {args.threads} threads")
    print("| run | first update (s) | median of the rest (s) | min - max (s) |\n|---|---|---|---|")
    for mode in ("eager", "compiled"):
        s = results[mode]["seconds"]
        print(f"| {mode} | {s[0]:.2f} | {statistics.median(s[1:]):.2f} | {min(s[1:]):.2f} - {max(s[1:]):.2f} |")
    saved = eager - compiled
    payback = f"{(first - compiled) / saved:.0f} updates" if saved > 0 else "never"
    print(f"compiled saves {saved:.2f} s per update ({saved / eager:.0%}); its compile time pays back after {payback}")


if __name__ == "__main__":
    main()
