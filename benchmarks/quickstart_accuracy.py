"""Does the quickstart really learn? Train SmolLM2-135M with GRPO for a fixed wall-clock budget and
print held-out accuracy before and after.

    python benchmarks/quickstart_accuracy.py                    # 15 minutes, the quickstart values
    python benchmarks/quickstart_accuracy.py --minutes 5 actor.lr=3e-4 data.difficulty=1
    python benchmarks/quickstart_accuracy.py --config generated/quickstart-hf.yaml

Held-out numbers on the same 64 arithmetic questions the model never trains on:
  greedy   the trainer's validation accuracy (temperature 0), before the first step and at the end
  sampled  (--sampled K) mean accuracy of K samples per question at the training temperature (what
           GRPO optimises); off by default: on a busy 2-core CPU it costs minutes
The budget is the run's length (trainer.total_training_minutes: a cosine LR decays over it); it covers
model loading, training and the trainer's two validations;
the sampled evaluations run outside it. Results go to benchmarks/results/quickstart_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# The recipe is the catalogue's `quickstart-hf` preset (the quickstart's learning values with the hf
# engine), so the benchmark and `tune new --preset quickstart` can never drift apart. Only the budget,
# the run directory and validation/checkpoint cadence are set here.
BENCH_OVERRIDES = ["name=quickstart-bench", "trainer.total_training_steps=1000", "trainer.test_freq=-1",
                   "trainer.save_freq=-1", "trainer.val_before_train=true"]


def quickstart_recipe_dict() -> dict:
    from tunecli.catalog import load_catalog

    return load_catalog().preset("quickstart-hf").recipe


def sampled_accuracy(trainer, samples_per_prompt: int = 4, seed: int = 1234) -> float:
    """Mean accuracy of temperature samples on the held-out prompts (seeded: same draw before and after)."""
    from tunecli.trainer.rollout import SamplingSettings

    r = trainer.recipe
    sampling = SamplingSettings(n=samples_per_prompt, temperature=r.rollout.temperature, top_p=r.rollout.top_p,
                                max_new_tokens=r.data.max_response_length, seed=seed)
    rollout = trainer._generate(trainer.val_samples, sampling)
    rewards = trainer._score(trainer.val_samples, rollout)
    return float((rewards >= 1.0).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="Wall-clock budget of the training run.")
    parser.add_argument("--config", help="A recipe YAML instead of the built-in quickstart values.")
    parser.add_argument(
        "--threads", default="auto",
        help="torch threads: a number, or auto = 1 when the load average already fills the cores (threads that "
        "wait on each other's barriers crawl on an oversubscribed CPU), else torch's default.",
    )
    parser.add_argument("--sampled", type=int, default=0, metavar="K", help="Also measure K-sample held-out accuracy.")
    parser.add_argument("--out", default="benchmarks/results/quickstart_accuracy.json")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args()

    import yaml

    from tunecli.config.io import recipe_from_dict

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data = yaml.safe_load(Path(args.config).read_text()) if args.config else quickstart_recipe_dict()
    overrides = [*([] if args.config else BENCH_OVERRIDES), f"trainer.total_training_minutes={args.minutes}", "trainer.default_local_dir=benchmarks/results/quickstart-run"]
    busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    if args.threads != "auto" or busy:
        overrides.append(f"trainer.num_threads={1 if args.threads == 'auto' else int(args.threads)}")
    overrides += args.overrides
    recipe = recipe_from_dict(data, overrides)
    run_dir = Path(recipe.trainer.default_local_dir)

    from tunecli.trainer.loop import Trainer

    started = time.time()
    trainer = Trainer(recipe, resume=False)
    try:
        trainer.setup()
        t_eval = time.time()
        sampled_before = sampled_accuracy(trainer, args.sampled) if args.sampled else None
        trainer.stop.started += time.time() - t_eval  # the budget counts setup and training, not this extra eval
        t_train = time.time()
        code = trainer.train()
        train_minutes = (time.time() - t_train) / 60
        sampled_after = sampled_accuracy(trainer, args.sampled) if args.sampled else None
    finally:
        trainer.cleanup()
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in history if "val/acc" in r]
    steps = [r for r in history if "reward/mean" in r]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    result = {
        "budget_minutes": args.minutes,
        "train_wall_minutes": round(train_minutes, 2),
        "total_wall_minutes": round((time.time() - started) / 60, 2),
        "steps": len(steps),
        "greedy_before": val[0]["val/acc"] if val else None,
        "greedy_after": val[-1]["val/acc"] if val else None,
        "sampled_before": sampled_before,
        "sampled_after": sampled_after,
        "train_reward_first": steps[0]["reward/mean"] if steps else None,
        "train_reward_last5": sum(r["reward/mean"] for r in steps[-5:]) / max(1, len(steps[-5:])),
        "mean_step_s": sum(r["timing/step_s"] for r in steps) / max(1, len(steps)),
        "peak_rss_gib": summary.get("peak_rss_gib"),
        "torch_threads": __import__("torch").get_num_threads(),
        "load_average": os.getloadavg(),
        "recipe": recipe.model_dump(mode="json"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    gb, ga, sb, sa = (result[k] for k in ("greedy_before", "greedy_after", "sampled_before", "sampled_after"))
    print(
        f"\nquickstart on SmolLM2-135M, {result['steps']} steps in {result['train_wall_minutes']:.1f} min "
        f"(budget {args.minutes:g} min, {result['mean_step_s']:.0f} s/step, load average {result['load_average'][0]:.1f})\n"
        f"  held-out accuracy, greedy : {gb:.3f} -> {ga:.3f}  ({100 * (ga - gb):+.1f} points)\n"
        + (f"  held-out accuracy, sampled: {sb:.3f} -> {sa:.3f}  ({100 * (sa - sb):+.1f} points)\n" if args.sampled else "")
        + f"  train reward (sampled, train prompts): first step {result['train_reward_first']:.3f}, "
        f"mean of last 5 steps {result['train_reward_last5']:.3f}\n"
        f"  peak memory (RSS, all processes): {result['peak_rss_gib']} GiB\n"
        f"  results: {args.out}"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
