"""Rollout throughput on the same prompts: raw vLLM, our vLLM engine inside training steps, the hf engine.

    python benchmarks/rollout_throughput.py                      # quickstart recipe, LoRA, both syncs
    python benchmarks/rollout_throughput.py --method full --steps 3
    python benchmarks/rollout_throughput.py --config generated/NAME.yaml rollout.n=8

For each LoRA sync mode (or full fine-tuning) it builds the real trainer with ``rollout.name=vllm``
and runs real training steps (rollout, rewards, GRPO update, weight sync). Around the engine it
records every prompt batch and times ``update_weights`` and ``generate``. The same prompt batches are
then replayed through the bare ``vllm.LLM.generate`` of the same engine (raw vLLM: no wrapper, no
sync) and through the ``hf`` engine on the trained policy. A short generate warms the engine up
first and is not counted; raw vLLM replays each step's prompts right after that step. Tokens/s counts generated tokens; "in step" divides them by generate + sync time.
Goal: rollout inside a step within 1.25x of raw vLLM.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


@dataclass
class Timings:
    batches: list = field(default_factory=list)  # (prompts, sampling) of each measured step
    gen_s: list[float] = field(default_factory=list)
    gen_tokens: list[int] = field(default_factory=list)
    sync_s: list[float] = field(default_factory=list)


def instrument(engine, timings: Timings, counting: list[bool]) -> None:
    """Time the engine's generate and update_weights where the trainer calls them."""
    generate, sync = engine.generate, engine.update_weights

    def timed_generate(prompts, sampling):
        start = time.perf_counter()
        rollout = generate(prompts, sampling)
        if counting[0]:
            timings.gen_s.append(time.perf_counter() - start)
            timings.gen_tokens.append(rollout.num_generated_tokens)
            timings.batches.append((prompts, sampling))
        return rollout

    def timed_sync(stream):
        start = time.perf_counter()
        sync(stream)
        if counting[0]:
            timings.sync_s.append(time.perf_counter() - start)

    engine.generate, engine.update_weights = timed_generate, timed_sync


def raw_vllm(llm, batches) -> tuple[float, int]:
    """The same batches through vllm.LLM.generate with the same sampling parameters."""
    from vllm import SamplingParams, TokensPrompt

    seconds, tokens = 0.0, 0
    for prompts, s in batches:
        params = SamplingParams(
            n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=max(s.top_k, 0),
            max_tokens=s.max_new_tokens, logprobs=0, seed=s.seed, detokenize=False,
        )
        start = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        seconds += time.perf_counter() - start
        tokens += sum(len(c.token_ids) for o in outs for c in o.outputs)
    return seconds, tokens


def hf_engine(trainer, batches) -> tuple[float, int]:
    from tunecli.trainer.rollout import EngineSettings
    from tunecli.trainer.rollout.hf import HFEngine

    settings = EngineSettings.from_recipe(trainer.recipe, trainer.policy.model_path)
    live = replace(settings, rollout=settings.rollout.model_copy(update={"dtype": "auto"}))  # on the policy itself
    engine = HFEngine(live, trainer.policy.model, trainer.tokenizer)
    seconds, tokens = 0.0, 0
    for prompts, s in batches:
        start = time.perf_counter()
        tokens += engine.generate(prompts, s).num_generated_tokens
        seconds += time.perf_counter() - start
    return seconds, tokens


def run_mode(args, overrides: list[str], label: str) -> list[tuple]:
    from tunecli.config.io import load_recipe, recipe_from_dict
    from tunecli.trainer.loop import Trainer
    from tunecli.trainer.rollout.base import SamplingSettings

    with tempfile.TemporaryDirectory(prefix="tunecli-bench-") as run_dir:
        common = [
            "rollout.name=vllm", f"trainer.default_local_dir={run_dir}", "trainer.val_before_train=false",
            f"trainer.total_training_steps={args.steps}", "trainer.resume=false",
        ]
        overrides = [*common, *overrides]
        recipe = load_recipe(args.config, overrides) if args.config else recipe_from_dict({}, overrides)
        trainer = Trainer(recipe, resume=False)
        try:
            trainer.setup()
            print(f"[{label}] engine start {trainer.engine.start_s:.1f} s", flush=True)
            # Warm the engine up (first-call kernel setup) on a few prompts, outside the measurement.
            warm = [p.token_ids for p in trainer.train_samples[:4]]
            trainer.engine.generate(warm, SamplingSettings(n=2, max_new_tokens=8, seed=0))
            timings, counting = Timings(), [True]
            instrument(trainer.engine, timings, counting)
            raw_s = raw_tokens = 0
            for step in range(args.steps):
                start = time.perf_counter()
                if trainer.train_step() is None or trainer.stop.requested:
                    raise SystemExit("interrupted")
                trainer.step += 1
                step_s = time.perf_counter() - start
                # Raw vLLM right after the step, on the same prompts: same weights, same machine load.
                counting[0] = False
                s, t = raw_vllm(trainer.engine.llm, timings.batches[-1:])
                counting[0] = True
                raw_s, raw_tokens = raw_s + s, raw_tokens + t
                print(
                    f"[{label}] step {step}: {step_s:.1f} s (generate {timings.gen_s[-1]:.1f} s, "
                    f"sync {timings.sync_s[-1]:.2f} s, {timings.gen_tokens[-1]} tokens); raw vLLM {s:.1f} s",
                    flush=True,
                )
            sync_s = statistics.mean(timings.sync_s)
            gen_s, tokens = sum(timings.gen_s), sum(timings.gen_tokens)
            rows = [
                (f"{label}: raw vllm.LLM.generate", raw_tokens, raw_s, None),
                (f"{label}: engine in step (generate + sync)", tokens, gen_s + sum(timings.sync_s), sync_s),
                (f"{label}: engine generate only", tokens, gen_s, None),
            ]
            if args.hf:
                hf_s, hf_tokens = hf_engine(trainer, timings.batches)
                rows.append((f"{label}: hf engine (HFEngine.generate)", hf_tokens, hf_s, None))
            return rows
        finally:
            trainer.cleanup()
            del trainer
            gc.collect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="Recipe YAML (default: the schema's defaults = the quickstart).")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--lora-sync", default="merge,adapter", help="Comma list of LoRA sync modes to measure.")
    parser.add_argument("--steps", type=int, default=1, help="Measured training steps per mode.")
    parser.add_argument("--no-hf", dest="hf", action="store_false", help="Skip the hf engine.")
    parser.add_argument("overrides", nargs="*", help="section.key=value recipe overrides")
    args = parser.parse_args()

    rows = []
    if args.method == "full":
        rows += run_mode(args, ["model.method=full", *args.overrides], "full")
    else:
        for mode in args.lora_sync.split(","):
            rows += run_mode(args, ["model.method=lora", f"rollout.lora_sync={mode}", *args.overrides], f"lora {mode}")
            args.hf = args.hf and mode == args.lora_sync.split(",")[0]  # the hf engine once is enough

    from rich.console import Console
    from rich.table import Table

    table = Table(title="Rollout throughput (same prompts; generated tokens / seconds)")
    for col in ("rollout", "tokens", "seconds", "tokens/s", "sync s/step", "raw / this"):
        table.add_column(col, justify="left" if col == "rollout" else "right")
    raw_rate = None
    for name, tokens, seconds, sync in rows:
        rate = tokens / seconds
        if "raw vllm" in name:
            raw_rate = rate
        table.add_row(
            name, str(tokens), f"{seconds:.2f}", f"{rate:.1f}",
            "" if sync is None else f"{sync:.3f}", f"{raw_rate / rate:.2f}x" if raw_rate else "",
        )
    Console(width=130).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
