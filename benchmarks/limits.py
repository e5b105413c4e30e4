"""This machine's limits (matmul FLOP/s, memory bandwidth) and how close the trainer gets to them.

    python benchmarks/limits.py                      # machine limits only
    python benchmarks/limits.py --run hf --run vllm  # + run a short training per engine and rate it
    python benchmarks/limits.py --metrics RUN_DIR    # + rate an existing run from RUN_DIR/metrics.jsonl

Training-phase FLOPs (the formula, per step; N = parameters used in matmuls, T = tokens through the
model: response tokens of every sample + prompt tokens, each prompt once per group when the trainer
shares it across the group's samples (its KV cache; the default), padding excluded so it counts as waste):
  policy forward + backward:  full fine-tuning 6*N*T (forward 2NT, activation grads 2NT, weight grads 2NT);
                              LoRA 4*N*T (the frozen base needs no weight grads; adapter FLOPs are <1%
                              at r=16 and are left out)
  + 2*N*T for each extra no-grad forward over the batch: the old-policy log-probs (when the trainer
    recomputes them) and the reference log-probs (when the KL loss is on).
  N counts every Linear weight including the LM head (tied embeddings count once, as the head's matmul;
  the input embedding is a lookup, not a matmul); the head's share only counts the positions that
  predict response tokens, the only ones the trainer sends through it. Attention scores (~4 * layers * T * ctx * d) are left
  out: a few percent at these lengths, so the achieved FLOP/s is slightly understated.
Step floor (``_step_floor.py``): the run's rollout and weight sync as measured plus its training FLOPs at
100% of the peak, against TRL's step when the run lies in a compare_trl.py --workdir.
Rollout: generated tokens/s against the decode roofline: min(bandwidth / weight bytes * concurrent
sequences (each decode step reads every weight once), matmul peak of the engine's dtype / 2N).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GIB, machine_summary, print_table, usable_cores  # noqa: E402
from _step_floor import print_step_floor, step_floor, trl_median_step  # noqa: E402

# ---------------------------------------------------------------- machine limits


def best_time(fn, *, repeats: int, min_time_s: float = 0.0) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls (best-of, because the CPU is shared)."""
    fn()  # warm-up: allocation, oneDNN kernel selection
    best = float("inf")
    spent = 0.0
    i = 0
    while i < repeats or spent < min_time_s:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        i += 1
    return best


def matmul_flops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Measured FLOP/s of an [m, k] @ [k, n] matmul (2*m*k*n FLOPs)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    t = best_time(lambda: torch.matmul(a, b, out=out), repeats=repeats)
    return 2.0 * m * k * n / t


def memory_bandwidth(n_bytes: int, repeats: int = 5) -> dict[str, float]:
    """Bytes/s of a large copy (reads + writes counted) and of a sum (reads)."""
    n = n_bytes // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    t_copy = best_time(lambda: dst.copy_(src), repeats=repeats)
    t_sum = best_time(lambda: src.sum(), repeats=repeats)
    return {"copy": 2.0 * n * 4 / t_copy, "sum": n * 4 / t_sum}


# Square sizes plus the shapes the trainer actually runs on SmolLM2-135M (hidden 576, MLP 1536,
# vocab 49152) for a batch of 16 sequences of ~128 tokens.
MATMUL_SHAPES = [
    ("square 512", (512, 512, 512)),
    ("square 1024", (1024, 1024, 1024)),
    ("square 2048", (2048, 2048, 2048)),
    ("MLP up  [2048x576]@[576x1536]", (2048, 576, 1536)),
    ("MLP down [2048x1536]@[1536x576]", (2048, 1536, 576)),
    ("LM head [2048x576]@[576x49152]", (2048, 576, 49152)),
]


@dataclass
class MachineLimits:
    fp32_flops: float  # best fp32 matmul FLOP/s over the shapes
    bf16_flops: float
    copy_bytes_s: float
    sum_bytes_s: float
    per_shape: list[tuple[str, float, float]]  # (shape name, fp32 FLOP/s, bf16 FLOP/s)


def measure_machine(*, quick: bool = False, threads: int | None = None) -> MachineLimits:
    torch.set_num_threads(threads or usable_cores())
    shapes = [("square 256", (256, 256, 256))] if quick else MATMUL_SHAPES
    repeats = 2 if quick else 10  # best-of-many: the CPU is shared, the best run is the least disturbed
    per_shape = []
    for name, (m, k, n) in shapes:
        f32 = matmul_flops(m, k, n, torch.float32, repeats)
        b16 = matmul_flops(m, k, n, torch.bfloat16, repeats)
        per_shape.append((name, f32, b16))
    bw = memory_bandwidth((16 if quick else 512) * 1024**2, repeats)
    return MachineLimits(
        fp32_flops=max(f for _, f, _ in per_shape),
        bf16_flops=max(b for _, _, b in per_shape),
        copy_bytes_s=bw["copy"],
        sum_bytes_s=bw["sum"],
        per_shape=per_shape,
    )


def print_machine(limits: MachineLimits) -> str:
    rows = [[name, f"{f32 / 1e9:.0f}", f"{b16 / 1e9:.0f}"] for name, f32, b16 in limits.per_shape]
    md = print_table(
        f"matmul GFLOP/s ({torch.get_num_threads()} threads; best of N)",
        ["shape [m,k]@[k,n]", "fp32", "bf16"],
        rows,
    )
    bw = (
        f"memory bandwidth: copy {limits.copy_bytes_s / 1e9:.1f} GB/s (read+write), "
        f"sum {limits.sum_bytes_s / 1e9:.1f} GB/s (read)"
    )
    print(bw)
    return md + "\n\n" + bw


# ---------------------------------------------------------------- the trainer against the limits


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: every Linear weight (incl. a tied LM head, counted once)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def training_flops(
    n_params: int,
    tokens: int,
    *,
    method: str,
    recompute_old_logprobs: bool,
    reference_forward: bool,
    head_params: int = 0,
    head_tokens: int | None = None,
) -> float:
    """FLOPs of one training phase (see the module docstring for the formula).

    ``head_params``/``head_tokens``: the LM head only runs on the positions that predict response
    tokens (logits_to_keep), so its share counts ``head_tokens`` instead of ``tokens``.
    """
    per_token = 6 if method == "full" else 4
    per_token += 2 * int(recompute_old_logprobs) + 2 * int(reference_forward)
    head_tokens = tokens if head_tokens is None else head_tokens
    return float(per_token) * (n_params * tokens - head_params * (tokens - head_tokens))


@dataclass
class RunRates:
    steps: int
    train_flops_s: float
    rollout_tok_s: float
    train_s: float
    rollout_s: float
    tokens: int
    generated: int


def step_training_flops(
    fields: list,
    prompt_tokens: list[int],
    *,
    n_params: int,
    method: str,
    recompute_old: bool,
    reference: bool,
    head_params: int = 0,
) -> list[float]:
    """``training_flops`` of each step (StepFields + its prompt tokens); the head runs on the generated tokens."""
    return [
        training_flops(n_params, f.generated_tokens + prompt, method=method, recompute_old_logprobs=recompute_old,
                       reference_forward=reference, head_params=head_params, head_tokens=f.generated_tokens)
        for f, prompt in zip(fields, prompt_tokens, strict=True)
    ]


def rate_steps(fields: list, prompt_tokens: list[int], **flop_args) -> RunRates:
    """Achieved training FLOP/s and rollout tokens/s over the given steps (StepFields + prompt tokens each;
    ``flop_args`` as ``step_training_flops`` takes them)."""
    train_s = sum(f.train_s - f.sync_s for f in fields)  # the update alone (sync is not training FLOPs)
    rollout_s = sum(f.rollout_s for f in fields)
    generated = sum(f.generated_tokens for f in fields)
    tokens = generated + sum(prompt_tokens)
    flops = sum(step_training_flops(fields, prompt_tokens, **flop_args))  # the formula is linear in the tokens
    return RunRates(
        steps=len(fields),
        train_flops_s=flops / train_s if train_s else 0.0,
        rollout_tok_s=generated / rollout_s if rollout_s else 0.0,
        train_s=train_s,
        rollout_s=rollout_s,
        tokens=tokens,
        generated=generated,
    )


def recipe_of_run(run_dir: Path):
    """The exact config of a finished run (saved with its last checkpoint)."""
    from tunecli.config.io import load_recipe

    configs = sorted(Path(run_dir).glob("checkpoints/step_*/config.yaml"), key=lambda p: int(p.parent.name[5:]))
    beside = Path(run_dir).with_suffix(".yaml")  # compare_trl.py keeps RUN_DIR.yaml next to a stopped run
    if not configs and beside.is_file():
        configs = [beside]
    if not configs:
        raise FileNotFoundError(f"no checkpoints/step_*/config.yaml under {run_dir}: cannot tell its config")
    return load_recipe(configs[-1])


def prompt_tokens_per_step(recipe, steps: int, *, shared: bool) -> list[int]:
    """Replay the trainer's own data pipeline: the prompt tokens the training passes run in each step.

    ``shared``: the trainer runs each prompt once for its whole group (its KV cache is shared by the
    n responses), so a prompt counts once; otherwise once per sample.
    """
    from tunecli.trainer.data import PromptSampler, load_splits, render_prompts
    from tunecli.trainer.embedded import resolve_model_path
    from tunecli.trainer.policy import load_tokenizer

    data = recipe.data
    tokenizer = load_tokenizer(resolve_model_path(recipe.model.path))
    train, _ = load_splits(data, recipe.trainer.seed)
    samples = render_prompts(
        train, split="train", tokenizer=tokenizer, system_prompt=data.system_prompt,
        max_prompt_length=data.max_prompt_length, filter_overlong=data.filter_overlong_prompts,
    )
    sampler = PromptSampler(samples, data.train_batch_size, recipe.trainer.seed, data.shuffle)
    per_prompt = 1 if shared else recipe.rollout.n
    return [sum(len(p.token_ids) for p in sampler.next_batch()) * per_prompt for _ in range(steps)]


def shares_prompts(recipe) -> bool:
    """tunecli's training passes run a group's prompt once unless gradient checkpointing is on (loop.py)."""
    return not recipe.model.enable_gradient_checkpointing


def is_on_policy(recipe) -> bool:
    """The trainer skips the old-log-prob pass when each rollout batch gets exactly one update."""
    actor = recipe.actor
    return actor.ppo_epochs == 1 and recipe.data.train_batch_size == actor.ppo_mini_batch_size


def rate_trainer(run_dir: Path, limits: MachineLimits, warmup: int = 1, goal_ratio: float = 7.0) -> dict:
    """Print and return the trainer's achieved rates as fractions of the machine's limits."""
    from _common import read_metrics, step_fields

    recipe = recipe_of_run(run_dir)
    samples = recipe.data.train_batch_size * recipe.rollout.n
    rows = read_metrics(run_dir)
    shared = shares_prompts(recipe)
    prompt_tokens = prompt_tokens_per_step(recipe, len(rows), shared=shared)
    timed = slice(warmup, None) if len(rows) > warmup else slice(None)
    fields = [step_fields(r, samples) for r in rows][timed]
    n_params, head_params, weight_bytes = model_size(recipe)
    recompute_old = not is_on_policy(recipe) and not recipe.rollout.use_rollout_logprobs
    reference = recipe.actor.use_kl_loss
    flop_args = dict(n_params=n_params, method=recipe.model.method, recompute_old=recompute_old, reference=reference,
                     head_params=head_params)
    rates = rate_steps(fields, prompt_tokens[timed], **flop_args)
    passes = (6 if recipe.model.method == "full" else 4) + 2 * recompute_old + 2 * reference
    bf16 = recipe.actor.compute_dtype == "bfloat16"
    floor = step_floor(fields, step_training_flops(fields, prompt_tokens[timed], **flop_args),
                       limits.bf16_flops if bf16 else limits.fp32_flops)
    trl_step_s = trl_median_step(run_dir, warmup)
    decode_bound = rollout_bound(limits, n_params, weight_bytes, samples)
    print(
        f"\ntrainer ({recipe.model.method}, engine {recipe.rollout.name}, {rates.steps} timed steps, "
        f"N={n_params / 1e6:.1f}M matmul params, {rates.tokens} tokens run "
        f"({'prompts once per group' if shared else 'prompts once per sample'}), {passes}*N FLOPs/token):"
    )
    print(
        f"  training phase: {rates.train_flops_s / 1e9:.1f} GFLOP/s = "
        f"{rates.train_flops_s / limits.fp32_flops:.0%} of the measured fp32 matmul peak "
        f"({limits.fp32_flops / 1e9:.0f} GFLOP/s); goal >= 40%"
        + (
            f"; compute_dtype bfloat16: {rates.train_flops_s / limits.bf16_flops:.0%} of the bf16 peak "
            f"({limits.bf16_flops / 1e9:.0f} GFLOP/s)"
            if bf16
            else ""
        )
        + (
            "  [train time includes the weight sync: the run has no timing/sync_s]"
            if recipe.rollout.name == "vllm" and not any(f.sync_s for f in fields)
            else ""
        )
    )
    print(
        f"  rollout phase: {rates.rollout_tok_s:.0f} generated tok/s = "
        f"{rates.rollout_tok_s / decode_bound:.0%} of the roofline bound for {samples} concurrent "
        f"sequences ({decode_bound:.0f} tok/s = min(bandwidth {limits.sum_bytes_s / 1e9:.0f} GB/s over "
        f"{weight_bytes / GIB:.2f} GiB of weights per decode step, matmul peak / 2N))"
    )
    print_step_floor(floor, "bf16" if bf16 else "fp32", trl_step_s, goal_ratio)
    return {
        "engine": recipe.rollout.name,
        "step_floor_s": floor.floor_s,
        "step_floor_no_sync_s": floor.no_sync_s,
        "step_s": floor.step_s,
        "trl_step_s": trl_step_s,
        "train_flops_s": rates.train_flops_s,
        "train_fraction_of_fp32": rates.train_flops_s / limits.fp32_flops,
        "rollout_tok_s": rates.rollout_tok_s,
        "rollout_fraction_of_roofline": rates.rollout_tok_s / decode_bound,
        "n_params": n_params,
        "flops_per_token_per_param": passes,
        "tokens": rates.tokens,
        "train_s": rates.train_s,
        "rollout_s": rates.rollout_s,
    }


def rollout_bound(limits: MachineLimits, n_params: int, weight_bytes: int, concurrent: int) -> float:
    """Decode tokens/s roofline: each decode step reads every weight once (bandwidth) and does 2N
    FLOPs per sequence (matmul peak of the weights' dtype); the slower of the two bounds it."""
    bandwidth_bound = limits.sum_bytes_s / weight_bytes * concurrent
    peak = limits.fp32_flops if weight_bytes >= 4 * n_params else limits.bf16_flops
    compute_bound = peak / (2.0 * n_params)
    return min(bandwidth_bound, compute_bound)


def model_size(recipe) -> tuple[int, int, int]:
    """(matmul parameters, of which the LM head, bytes of weights the rollout engine reads per decode step)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunecli.trainer.embedded import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(recipe.model.path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = matmul_params(model)
    head = model.get_output_embeddings()
    head_params = head.weight.numel() if isinstance(head, torch.nn.Linear) else 0
    if recipe.rollout.name == "vllm":
        itemsize = 4 if recipe.rollout.dtype == "float32" else 2
    else:
        itemsize = 4 if recipe.model.dtype == "float32" else 2
    return n, head_params, n * itemsize


def run_short_training(engine: str, steps: int, work: Path) -> Path:
    """`tune train` on the benchmark's default step (4 prompts x 4 samples, 64 tokens) for ``steps`` steps."""
    import yaml

    from compare_trl import BenchConfig, tunecli_command, tunecli_recipe
    from _common import run_child

    cfg = BenchConfig(steps=steps - 1, warmup=1)
    run_dir = work / f"limits-{engine}"
    config = work / f"limits-{engine}.yaml"
    config.write_text(yaml.safe_dump(tunecli_recipe(cfg, engine, run_dir), sort_keys=False))
    import os

    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", TOKENIZERS_PARALLELISM="false")
    child = run_child(tunecli_command(config), env=env, log_path=work / f"limits-{engine}.log")
    if child.returncode != 0:
        raise RuntimeError(f"tune train failed (exit {child.returncode}):\n{child.output[-3000:]}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds): a smoke test, not a measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    parser.add_argument("--metrics", type=Path, action="append", default=[], help="RUN_DIR of a finished tunecli run (repeatable)")
    parser.add_argument("--run", choices=["hf", "vllm"], action="append", default=[], help="run a short training with this engine and rate it")
    parser.add_argument("--steps", type=int, default=4, help="training steps for --run (the first is warm-up)")
    parser.add_argument("--workdir", type=Path, default=None, help="where --run keeps its runs")
    parser.add_argument("--goal-ratio", type=float, default=7.0, help="with --metrics beside TRL's runs: the share of the peak a step this many times shorter than TRL's needs")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    print(machine_summary())
    limits = measure_machine(quick=args.quick, threads=args.threads)
    out = {
        "machine": machine_summary(),
        "fp32_flops": limits.fp32_flops,
        "bf16_flops": limits.bf16_flops,
        "copy_bytes_s": limits.copy_bytes_s,
        "sum_bytes_s": limits.sum_bytes_s,
        "markdown": print_machine(limits),
        "runs": [],
    }
    run_dirs = list(args.metrics)
    if args.run:
        import tempfile

        work = args.workdir or Path(tempfile.mkdtemp(prefix="tunecli-limits-"))
        work.mkdir(parents=True, exist_ok=True)
        run_dirs += [run_short_training(engine, args.steps, work) for engine in args.run]
    for run_dir in run_dirs:
        out["runs"].append(rate_trainer(run_dir, limits, goal_ratio=args.goal_ratio))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
