"""Every feasibility check, run at `tune new` time (before anything is written) and by `tune validate`.

Each refusal is a ``TuneError`` naming the field, the value and a fix. Checks never import torch or
vLLM (availability is looked up with ``importlib.util.find_spec``) and never run user code.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from tunecli.catalog import HardwareEntry, ModelEntry, load_catalog, lookup_shape, shape_for_size
from tunecli.config.rules import batch_problems
from tunecli.errors import TuneError, field_error
from tunecli.config.trackers import tracker_problems
from tunecli.rewards import reward_problems
from tunecli.config.sizes import GiB, billions
from tunecli.authoring.datacheck import data_problems
from tunecli.authoring.memory import MemoryEstimate, engine_weights_per_rank, estimate, kv_bytes_per_token
from tunecli.config.schema import Recipe

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
    shape: ModelEntry | None  # None: unknown here (offline, a cluster path) and no model.size given
    hw: HardwareEntry
    warnings: list[str]

    @property
    def world(self) -> int:
        return self.recipe.launch.world_size


def check_batches(ctx: Context) -> Iterator[TuneError]:
    yield from batch_problems(ctx.recipe, ctx.world, ctx.warnings)


def check_parallelism(ctx: Context) -> Iterator[TuneError]:
    r, world = ctx.recipe, ctx.world
    tp = r.rollout.tensor_model_parallel_size
    for key in ("param_offload", "optimizer_offload"):
        if getattr(r.actor, key) and ctx.hw.kind == "gpu" and r.launch.strategy == "none":
            yield field_error(f"actor.{key}", True, "offloading to the CPU is done by FSDP2, and launch.strategy is none",
                              "use --strategy fsdp2 (it works on one GPU too).")
        elif getattr(r.actor, key) and ctx.hw.kind == "cpu":
            ctx.warnings.append(f"actor.{key} has no effect on a CPU (everything already lives in RAM).")
    endpoint = r.launch.rdzv_endpoint
    if r.launch.nnodes > 1 and not re.fullmatch(r"[A-Za-z0-9._-]+:[0-9]{1,5}", endpoint):
        yield field_error("launch.rdzv_endpoint", endpoint, "not a HOST:PORT rendezvous address",
                          "set launch.rdzv_endpoint=HOST:PORT, e.g. node0.cluster:29500.")
    if world % tp:
        yield field_error("rollout.tensor_model_parallel_size", tp, f"does not divide the {world} processes",
                          f"use a divisor of {world}, e.g. {max(d for d in range(1, world + 1) if world % d == 0 and d <= tp)}.")
    elif ctx.hw.kind == "cpu" and tp > 1:
        yield field_error("rollout.tensor_model_parallel_size", tp, "vLLM on a CPU runs one engine per process",
                          "set rollout.tensor_model_parallel_size=1.")
    elif ctx.shape is not None and ctx.shape.heads % tp:
        yield field_error("rollout.tensor_model_parallel_size", tp, f"the model's {ctx.shape.heads} attention heads "
                          "do not split evenly over the tensor-parallel ranks",
                          f"use a divisor of {ctx.shape.heads} that divides the GPU count.")


def check_lengths(ctx: Context) -> Iterator[TuneError]:
    r = ctx.recipe
    total = r.data.max_prompt_length + r.data.max_response_length
    if r.max_model_len < total:
        yield field_error("rollout.max_model_len", r.max_model_len, f"shorter than max_prompt_length + "
                          f"max_response_length ({r.data.max_prompt_length} + {r.data.max_response_length} = {total})",
                          f"raise it to {total} or shorten data.max_response_length.")
    if ctx.shape is not None and r.max_model_len > ctx.shape.max_position:
        yield field_error("rollout.max_model_len", r.max_model_len, f"the model '{r.model.path}' handles at most "
                          f"{ctx.shape.max_position} tokens", "shorten data.max_prompt_length / data.max_response_length.")


def check_method(ctx: Context) -> Iterator[TuneError]:
    m = ctx.recipe.model
    if m.method == "lora" and m.lora_rank <= 0:
        yield field_error("model.lora_rank", m.lora_rank, "method lora needs a rank > 0",
                          "set model.lora_rank=16 (32 as in verl's cards), or --method full.")
    if m.dtype == "bfloat16" and not ctx.hw.bf16:
        if ctx.hw.kind == "cpu":
            ctx.warnings.append("model.dtype bfloat16 on a CPU is slow without AMX; float32 is usually faster.")
        else:
            yield field_error("model.dtype", m.dtype, f"{ctx.hw.name} has no bfloat16 support", "set model.dtype=float16.")


def check_engine(ctx: Context) -> Iterator[TuneError]:
    r = ctx.recipe
    entry = load_catalog().get("engines", r.rollout.name, field="rollout.name")
    if not entry.module:
        return
    available = importlib.util.find_spec(entry.module) is not None
    if ctx.hw.kind == "cpu" and not available:
        yield field_error("rollout.name", r.rollout.name, f"the '{entry.module}' package is not installed on this machine "
                          "(a CPU recipe runs here)", f"{entry.install.get('cpu', 'install it')}, or use --engine hf.")
    elif not available:
        ctx.warnings.append(f"'{entry.module}' is not installed here; install it where the recipe runs "
                            f"({entry.install.get('gpu', '')}).")


def check_data(ctx: Context) -> Iterator[TuneError]:
    yield from data_problems(ctx.recipe, ctx.hw.kind, ctx.warnings)


def check_reward(ctx: Context) -> Iterator[TuneError]:
    reward = ctx.recipe.reward
    for text in reward.function_list():
        yield from reward_problems(text, reward.format_pattern)


def check_trackers(ctx: Context) -> Iterator[TuneError]:
    yield from tracker_problems(ctx.recipe.trainer.logger)


def check_memory(ctx: Context, report: Report) -> Iterator[TuneError]:
    r, shape = ctx.recipe, ctx.shape
    if shape is None:
        return
    mem = estimate(r, shape, ctx.hw)
    report.memory = mem
    if r.rollout.name == "vllm" and ctx.hw.kind == "gpu":
        weights = engine_weights_per_rank(r, shape)
        need = weights + kv_bytes_per_token(r, shape) * r.max_model_len
        if mem.engine < need:
            util = min(0.95, (need / mem.budget) + 0.05)
            yield field_error("rollout.gpu_memory_utilization", r.rollout.gpu_memory_utilization,
                              f"vLLM would get {mem.engine / GiB:.1f} GiB of the {ctx.hw.name}'s {mem.budget / GiB:.0f} GiB but "
                              f"its weights ({weights / GiB:.1f} GiB per tensor-parallel rank) and one {r.max_model_len}-token "
                              "sequence need more", f"raise it to {util:.2f} or raise rollout.tensor_model_parallel_size.")
    if not mem.fits:
        where = "per process" if ctx.hw.kind == "cpu" else "per GPU"
        yield TuneError(
            f"Memory: the estimated peak {where} is {mem.peak / GiB:.1f} GiB but the {ctx.hw.name} has "
            f"{mem.budget / GiB:.1f} GiB, {mem.over / GiB:.1f} GiB too much ({mem.breakdown()}; "
            f"model '{r.model.path}', {shape.params / 1e9:.2f}B parameters, method {r.model.method}). "
            f"Fix: {'; or '.join(_memory_fixes(r, ctx.hw, mem))}.",
            field="memory",
        )


def _memory_fixes(r: Recipe, hw: HardwareEntry, mem: MemoryEstimate) -> list[str]:
    """The settings that lower the peak, the largest contributor's first."""
    fixes = []
    samples = mem.generation + mem.parts.get("rollout batch", 0)
    if samples > mem.activations:  # the step's samples dominate: fewer of them, or fewer decoded at once
        fixes.append(f"a smaller rollout.n (now {r.rollout.n}), data.train_batch_size, "
                     "rollout.max_num_seqs or data.max_response_length")
    if r.model.method == "full":
        fixes.append("--method lora")
    if hw.kind == "gpu":  # on a CPU the weights already live in RAM: offloading changes nothing
        fixes += [f"actor.{key}=true" for key in ("param_offload", "optimizer_offload") if not getattr(r.actor, key)]
    if not r.model.enable_gradient_checkpointing:
        fixes.append("model.enable_gradient_checkpointing=true")
    if hw.kind == "gpu":
        fixes.append("more GPUs (--gpus / --nodes) with --strategy fsdp2")
    fixes.append("a smaller actor.ppo_micro_batch_size_per_gpu or data.max_response_length")
    if r.rollout.name == "vllm":
        fixes.append("a lower rollout.gpu_memory_utilization")
    return fixes


def model_shape_or_warning(recipe: Recipe, warnings: list[str]) -> ModelEntry | None:
    """The model's shape for the estimate; unknown here, model.size stands in, else a warning says how to give it."""
    model = recipe.model
    shape, reason = lookup_shape(model.path, model.revision)
    if shape is not None:
        return shape
    if model.size:
        stand_in = shape_for_size(billions(model.size))
        warnings.append(f"model.path '{model.path}': config.json cannot be read here ({reason}); the memory estimate "
                        f"uses model.size {model.size} with {stand_in.description}.")
        return stand_in
    warnings.append(f"model.path '{model.path}': config.json cannot be read here ({reason}), so the memory estimate "
                    f"is unknown and skipped. Give the size with --model-size 8B (model.size in the YAML), or write the "
                    f"recipe where the model can be read (hf download {model.path} config.json).")
    return None


def check_recipe(recipe: Recipe) -> Report:
    """Run every check; the report holds all refusals (not just the first) and the memory estimate."""
    report = Report()
    cat = load_catalog()
    try:
        hw = cat.get("hardware", recipe.launch.hardware, field="launch.hardware")
        shape = model_shape_or_warning(recipe, report.warnings)
    except TuneError as e:
        report.errors.append(e)
        return report
    ctx = Context(recipe, shape, hw, report.warnings)
    for check in (check_batches, check_parallelism, check_lengths, check_method, check_engine, check_data,
                  check_reward, check_trackers):
        report.errors.extend(check(ctx))
    report.errors.extend(check_memory(ctx, report))
    return report
