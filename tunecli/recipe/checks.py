"""Every feasibility check, run at `tune new` time (before anything is written) and by `tune validate`.

Each refusal is a ``TuneError`` naming the field, the value and a fix. Checks never import torch or
vLLM: availability is looked up with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import inspect
import numbers
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunecli.catalog import HardwareEntry, ModelEntry, load_catalog, model_shape
from tunecli.errors import TuneError
from tunecli.recipe.memory import GiB, MemoryEstimate, engine_weights_per_rank, estimate, kv_bytes_per_token
from tunecli.recipe.schema import Recipe

# One sample per built-in dataset, to call a reward function once before training.
_SAMPLES = {
    "arithmetic": ("What is 17 + 25?", "17 + 25 = 42. The answer is 42.", "42"),
    "countdown": ("Using 3, 5, 7 reach 22.", "3 * 5 + 7 = 22", "22"),
    "gsm8k": ("Tom has 3 apples and buys 2 more. How many?", "3 + 2 = 5\n#### 5", "5"),
}


@dataclass
class Report:
    errors: list[TuneError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    memory: MemoryEstimate | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class Context:
    recipe: Recipe
    shape: ModelEntry
    hw: HardwareEntry
    warnings: list[str]

    @property
    def world(self) -> int:
        return self.recipe.launch.nnodes * self.recipe.launch.n_gpus_per_node


def _err(field_: str, value, problem: str, fix: str) -> TuneError:
    return TuneError(f"{field_} = {value!r}: {problem}. Fix: {fix}", field=field_)


def check_batches(ctx: Context) -> Iterator[TuneError]:
    r, world = ctx.recipe, ctx.world
    batch, n = r.data.train_batch_size, r.rollout.n
    mini, micro = r.actor.ppo_mini_batch_size, r.actor.ppo_micro_batch_size_per_gpu
    if batch % world:
        yield _err("data.train_batch_size", batch, f"prompts per step must split evenly over the {world} "
                   "data-parallel processes (each keeps whole GRPO groups)",
                   f"use a multiple of {world}, e.g. {max(world, batch // world * world)}.")
    if mini > batch:
        yield _err("actor.ppo_mini_batch_size", mini, f"larger than data.train_batch_size ({batch})",
                   f"set it to {batch} (one update per step) or a divisor of {batch}.")
    elif batch % mini:
        yield _err("actor.ppo_mini_batch_size", mini, f"does not divide data.train_batch_size ({batch}), "
                   "so the last mini-batch would be short", f"use a divisor of {batch}, e.g. {batch}.")
    elif (mini * n) % world:
        yield _err("actor.ppo_mini_batch_size", mini, f"its {mini * n} samples (x rollout.n {n}) do not split "
                   f"over {world} processes", f"make mini-batch x rollout.n a multiple of {world}.")
    elif r.actor.ppo_max_token_len_per_gpu is None:
        per_rank = mini * n // world
        if per_rank % micro:
            divisors = [d for d in range(1, per_rank + 1) if per_rank % d == 0 and d <= micro]
            yield _err("actor.ppo_micro_batch_size_per_gpu", micro, f"each rank gets {per_rank} samples per "
                       f"mini-batch (ppo_mini_batch_size {mini} x rollout.n {n} / {world} processes), which "
                       "is not a whole number of micro-batches", f"use a divisor of {per_rank}, e.g. {max(divisors)}.")
    if r.algorithm.name == "rloo" and n < 2:
        yield _err("rollout.n", n, "RLOO's leave-one-out baseline needs at least 2 samples per prompt",
                   "set rollout.n to 4 or more.")
    elif n == 1:
        ctx.warnings.append("rollout.n = 1: each GRPO group has one member, so the advantage is the raw reward.")


def check_parallelism(ctx: Context) -> Iterator[TuneError]:
    r, world = ctx.recipe, ctx.world
    tp = r.rollout.tensor_model_parallel_size
    if r.launch.strategy == "none" and world > 1:
        yield _err("launch.strategy", "none", f"{world} processes need a sharding strategy",
                   "use --strategy fsdp2, or --gpus 1 --nodes 1.")
    for key in ("param_offload", "optimizer_offload"):
        if getattr(r.actor, key) and ctx.hw.kind == "gpu" and r.launch.strategy == "none":
            yield _err(f"actor.{key}", True, "offloading to the CPU is done by FSDP2, and launch.strategy is none",
                       "use --strategy fsdp2 (it works on one GPU too).")
        elif getattr(r.actor, key) and ctx.hw.kind == "cpu":
            ctx.warnings.append(f"actor.{key} has no effect on a CPU (everything already lives in RAM).")
    endpoint = r.launch.rdzv_endpoint
    if r.launch.nnodes > 1 and not re.fullmatch(r"[A-Za-z0-9._-]+:[0-9]{1,5}", endpoint):
        yield _err("launch.rdzv_endpoint", endpoint, "not a HOST:PORT rendezvous address",
                   "set launch.rdzv_endpoint=HOST:PORT, e.g. node0.cluster:29500.")
    if world % tp:
        yield _err("rollout.tensor_model_parallel_size", tp, f"does not divide the {world} processes",
                   f"use a divisor of {world}, e.g. {max(d for d in range(1, world + 1) if world % d == 0 and d <= tp)}.")
    elif ctx.hw.kind == "cpu" and tp > 1:
        yield _err("rollout.tensor_model_parallel_size", tp, "vLLM on a CPU runs one engine per process",
                   "set rollout.tensor_model_parallel_size=1.")
    elif ctx.shape.heads % tp:
        yield _err("rollout.tensor_model_parallel_size", tp, f"the model's {ctx.shape.heads} attention heads "
                   "do not split evenly over the tensor-parallel ranks",
                   f"use a divisor of {ctx.shape.heads} that divides the GPU count.")


def check_lengths(ctx: Context) -> Iterator[TuneError]:
    r = ctx.recipe
    total = r.data.max_prompt_length + r.data.max_response_length
    if r.max_model_len < total:
        yield _err("rollout.max_model_len", r.max_model_len, f"shorter than max_prompt_length + "
                   f"max_response_length ({r.data.max_prompt_length} + {r.data.max_response_length} = {total})",
                   f"raise it to {total} or shorten data.max_response_length.")
    if r.max_model_len > ctx.shape.max_position:
        yield _err("rollout.max_model_len", r.max_model_len, f"the model '{r.model.path}' handles at most "
                   f"{ctx.shape.max_position} tokens", "shorten data.max_prompt_length / data.max_response_length.")


def check_method(ctx: Context) -> Iterator[TuneError]:
    m = ctx.recipe.model
    if m.method == "lora" and m.lora_rank <= 0:
        yield _err("model.lora_rank", m.lora_rank, "method lora needs a rank > 0",
                   "set model.lora_rank=16 (32 as in verl's cards), or --method full.")
    if m.dtype == "bfloat16" and not ctx.hw.bf16:
        if ctx.hw.kind == "cpu":
            ctx.warnings.append("model.dtype bfloat16 on a CPU is slow without AMX; float32 is usually faster.")
        else:
            yield _err("model.dtype", m.dtype, f"{ctx.hw.name} has no bfloat16 support", "set model.dtype=float16.")


def check_engine(ctx: Context) -> Iterator[TuneError]:
    r = ctx.recipe
    entry = load_catalog().get("engines", r.rollout.name, field="rollout.name")
    if not entry.module:
        return
    available = importlib.util.find_spec(entry.module) is not None
    if ctx.hw.kind == "cpu" and not available:
        yield _err("rollout.name", r.rollout.name, f"the '{entry.module}' package is not installed on this machine "
                   "(a CPU recipe runs here)", f"{entry.install.get('cpu', 'install it')}, or use --engine hf.")
    elif not available:
        ctx.warnings.append(f"'{entry.module}' is not installed here; install it where the recipe runs "
                            f"({entry.install.get('gpu', '')}).")


def check_data(ctx: Context) -> Iterator[TuneError]:
    d, r = ctx.recipe.data, ctx.recipe
    entry = load_catalog().find("datasets", d.dataset)
    if entry is None:
        yield _err("data.dataset", d.dataset, "unknown dataset",
                   f"use one of {', '.join(load_catalog().names('datasets'))}.")
        return
    if entry.kind == "file":
        if not d.train_files:
            yield _err("data.train_files", None, f"dataset {d.dataset} reads a file", "pass --dataset path/to/train.jsonl "
                       "or --set data.train_files=PATH.")
        for key in ("train_files", "val_files"):
            path = getattr(d, key)
            if path and not Path(path).expanduser().exists():
                msg = f"data.{key} '{path}' does not exist here"
                if ctx.hw.kind == "cpu":
                    yield _err(f"data.{key}", path, "the file does not exist (a CPU recipe runs on this machine)",
                               "give the path of an existing .jsonl or .parquet file.")
                else:
                    ctx.warnings.append(msg + "; make sure it exists where the recipe runs.")
    if r.reward.function == "format":
        try:
            re.compile(r.reward.format_pattern or "")
        except re.error as e:
            yield _err("reward.format_pattern", r.reward.format_pattern, f"not a valid regex ({e})", "fix the pattern.")
        if not r.reward.format_pattern:
            yield _err("reward.format_pattern", None, "reward 'format' needs a pattern",
                       "--set reward.format_pattern='<answer>.*</answer>'.")


def check_run_length(ctx: Context) -> Iterator[TuneError]:
    t = ctx.recipe.trainer
    for key in ("save_freq", "test_freq"):
        v = getattr(t, key)
        if v == 0 or v < -1:
            yield _err(f"trainer.{key}", v, "must be -1 (only at the end) or a step count >= 1", f"set trainer.{key}=-1.")


def _load_custom_reward(spec: str) -> Callable:
    file, _, func = spec.rpartition(":")
    path = Path(file).expanduser()
    if not path.is_file():
        raise _err("reward.function", spec, f"the file '{file}' does not exist", "give path/to/file.py:function.")
    mod_spec = importlib.util.spec_from_file_location(f"_tunecli_reward_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        sys.modules[mod_spec.name] = module
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:  # the user's code: any error is theirs to see
        raise _err("reward.function", spec, f"importing {file} failed ({type(e).__name__}: {e})",
                   "fix the file so that `python FILE` runs.") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise _err("reward.function", spec, f"{file} has no function '{func}'",
                   f"use one of {', '.join(names) or '(none defined)'}.")
    return fn


def check_reward(ctx: Context) -> Iterator[TuneError]:
    r = ctx.recipe
    spec = r.reward.function
    try:
        from tunecli.trainer.rewards import resolve_reward  # provided by the trainer
    except ImportError:
        resolve_reward = None
    custom = ":" in spec
    if not custom:
        names = [n for n in load_catalog().names("rewards") if n != "custom"]
        if spec not in names:
            yield _err("reward.function", spec, "unknown reward", f"use one of {', '.join(names)} or path/to/file.py:function.")
            return
        if resolve_reward is not None and not (spec == "format" and not r.reward.format_pattern):
            try:
                resolve_reward(spec, format_pattern=r.reward.format_pattern, **r.reward.kwargs)
            except TuneError as e:
                yield e
            except Exception as e:  # noqa: BLE001 - report, don't crash
                yield _err("reward.function", spec, f"cannot be loaded ({type(e).__name__}: {e})", "reinstall tunecli.")
        return
    try:
        fn = _load_custom_reward(spec)
    except TuneError as e:
        yield e
        return
    try:
        sig = inspect.signature(fn)
        sig.bind(prompt="", completion="", ground_truth="")
    except (TypeError, ValueError):
        yield _err("reward.function", spec, "its signature does not accept (prompt, completion, ground_truth)",
                   "define it as def reward(prompt, completion, ground_truth, **kwargs) -> float.")
        return
    prompt, completion, truth = _SAMPLES.get(r.data.dataset, _SAMPLES["arithmetic"])
    try:
        value = fn(prompt=prompt, completion=completion, ground_truth=truth, **r.reward.kwargs)
    except Exception as e:  # noqa: BLE001
        yield _err("reward.function", spec, f"calling it on one sample raised {type(e).__name__}: {e}",
                   "make it return a float for any completion (0.0 when it cannot score).")
        return
    if not isinstance(value, numbers.Real):
        yield _err("reward.function", spec, f"returned {type(value).__name__} ({value!r}) on a sample, not a number",
                   "return a float (e.g. 1.0 for correct, 0.0 otherwise).")


def check_memory(ctx: Context, report: Report) -> Iterator[TuneError]:
    r, shape = ctx.recipe, ctx.shape
    mem = estimate(r, shape, ctx.hw)
    report.memory = mem
    if r.rollout.name == "vllm" and ctx.hw.kind == "gpu":
        weights = engine_weights_per_rank(r, shape)
        need = weights + kv_bytes_per_token(r, shape) * r.max_model_len
        if mem.engine < need:
            util = min(0.95, (need / mem.budget) + 0.05)
            yield _err("rollout.gpu_memory_utilization", r.rollout.gpu_memory_utilization,
                       f"vLLM would get {mem.engine / GiB:.1f} GiB of the {ctx.hw.name}'s {mem.budget / GiB:.0f} GiB but "
                       f"its weights ({weights / GiB:.1f} GiB per tensor-parallel rank) and one {r.max_model_len}-token "
                       "sequence need more", f"raise it to {util:.2f} or raise rollout.tensor_model_parallel_size.")
    if not mem.fits:
        suggestions = []
        if r.model.method == "full":
            suggestions.append("--method lora")
        if not r.actor.param_offload:
            suggestions.append("actor.param_offload=true")
        if not r.actor.optimizer_offload:
            suggestions.append("actor.optimizer_offload=true")
        if not r.model.enable_gradient_checkpointing:
            suggestions.append("model.enable_gradient_checkpointing=true")
        if ctx.hw.kind == "gpu":
            suggestions.append("more GPUs (--gpus / --nodes) with --strategy fsdp2")
        suggestions.append("a smaller actor.ppo_micro_batch_size_per_gpu or data.max_response_length")
        if r.rollout.name == "vllm":
            suggestions.append("a lower rollout.gpu_memory_utilization")
        where = "per process" if ctx.hw.kind == "cpu" else "per GPU"
        yield TuneError(
            f"Memory: the estimated peak {where} is {mem.peak / GiB:.1f} GiB but the {ctx.hw.name} has "
            f"{mem.budget / GiB:.1f} GiB, {mem.over / GiB:.1f} GiB too much ({mem.breakdown()}; "
            f"model '{r.model.path}', {shape.params / 1e9:.2f}B parameters, method {r.model.method}). "
            f"Fix: {'; or '.join(suggestions)}.",
            field="memory",
        )


def check_recipe(recipe: Recipe) -> Report:
    """Run every check; the report holds all refusals (not just the first) and the memory estimate."""
    report = Report()
    cat = load_catalog()
    try:
        hw = cat.get("hardware", recipe.launch.hardware, field="launch.hardware")
        shape = model_shape(recipe.model.path)
    except TuneError as e:
        report.errors.append(e)
        return report
    ctx = Context(recipe, shape, hw, report.warnings)
    for check in (check_batches, check_parallelism, check_lengths, check_method, check_engine, check_data,
                  check_run_length, check_reward):
        report.errors.extend(check(ctx))
    report.errors.extend(check_memory(ctx, report))
    return report
