"""`tune new --from-verl SCRIPT.sh`: read a verl launch script as text and map it onto ``Choices``.

The script is never executed (``shell`` reads it, ``command`` finds the ``main_ppo`` command and
evaluates its overrides). Each override is mapped onto our schema (``keys``), or listed as unmapped
with the reason. Inconsistent sources (a variable used but never defined, a variable written
without its ``$``, arithmetic over something that is not a number) are errors with line numbers,
all reported together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecli.authoring.defaults import Choices
from tunecli.authoring.render import yaml_value
from tunecli.catalog import Catalog, load_catalog
from tunecli.errors import TuneError
from tunecli.importers.verl.command import Override, read_overrides
from tunecli.config.rules import mini_batch_that_splits
from tunecli.config.verl_keys import (
    AR, COMBINED, VERL_DEFAULTS, VERL_MAX_TOKENS_PER_GPU, Mapped, Unmapped, as_bool, combine_algorithms,
    map_verl_override,
    takes_number,
)
from tunecli.importers.verl.shell import Unknown
from tunecli.importers.verl.expand import Deferred, Variable

# Mapped keys passed as choices rather than --set, so that build_recipe applies what comes with
# them (the catalogue's model, the algorithm's settings, the engine check, batch sizes per process).
_AS_CHOICES = {"model.path": "model", "rollout.name": "engine"}
# A vision-language model's name: Qwen2.5-VL, GLM-4.1V, MiniCPM-o/V, LLaVA, Kimi-VL ...
_VISION_MODEL = re.compile(r"(?i)(?:^|[-_/.])(?:vl|vision|llava|minicpm-?[ov])(?:$|[-_/.\d])|\d(?:\.\d+)?v(?:$|[-_/])")
_PROCESS_COUNTS = ("launch.n_gpus_per_node", "launch.nnodes")
_PER_GPU_MICRO = AR + "actor.ppo_micro_batch_size_per_gpu"
_GLOBAL_MICRO = AR + "actor.ppo_micro_batch_size"
_DYNAMIC = AR + "actor.use_dynamic_bsz"
_MAX_TOKENS = AR + "actor.ppo_max_token_len_per_gpu"


@dataclass
class VerlImport:
    choices: Choices
    unmapped: list[Unmapped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Draft:
    """What the import has gathered so far; problems are collected and reported together."""

    errors: list[str]
    choices: Choices = field(default_factory=lambda: Choices(strategy="fsdp2", engine="vllm"))
    sets: dict[str, str] = field(default_factory=lambda: {k: yaml_value(v) for k, v in VERL_DEFAULTS.items()})
    unmapped: list[Unmapped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    later: dict[str, Override] = field(default_factory=dict)  # COMBINED keys: read once all are seen
    process_counts: dict[str, Override] = field(default_factory=dict)

    def set(self, key: str, value: Any) -> None:
        # Strings stay as written: `--set` reads them like Hydra does (3e-5 -> float, True -> bool).
        self.sets[key] = value if isinstance(value, str) else yaml_value(value)

    def skip(self, o: Override, reason: str) -> None:
        self.unmapped.append(Unmapped(o.key, o.value, reason, o.line))


def _read_script(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise TuneError(f"--from-verl '{path}' cannot be read ({e.strerror}). Give the path of a verl launch script.",
                        field="--from-verl") from None


def _last_of_each(overrides: list[Override]) -> dict[str, Override]:
    seen: dict[str, Override] = {}
    for o in overrides:
        seen[o.key] = o  # Hydra: the last occurrence wins
    return seen


def _missing_dollar(o: Override, shell_vars: dict[str, Variable]) -> list[str]:
    """`key=name` where `name` is a variable the script defines: a forgotten `$` (and that variable's problems)."""
    var = shell_vars.get(o.raw) if o.raw is not None else None
    if var is None or not var.line:
        return []
    return [f"line {o.line}: {o.key}={o.raw} uses the shell variable '{o.raw}' without its '$' "
            f"(write {o.key}=${{{o.raw}}}).", *var.errors]


def _deferred_ok(o: Override, draft: _Draft) -> bool:
    """A value with ${ENV} references is kept as a reference, unless a check needs it now (a number)."""
    names = ", ".join(f"${n}" for n in sorted(o.value.names))
    gives = " ".join(f"--env {n}=VALUE" for n in sorted(o.value.names))
    if takes_number(o.key) or o.key in (_DYNAMIC, _MAX_TOKENS):
        draft.errors.append(f"line {o.line}: {o.key}={o.value} needs the value of {names} now (the import's checks "
                            f"use it); give it with {gives}.")
        return False
    draft.notes.append(f"line {o.line}: {o.key} keeps {names} as a reference: the launch script reads it from "
                       f"the environment when the job runs (or give it now with {gives}).")
    return True


def _map_each(seen: dict[str, Override], shell_vars: dict[str, Variable], draft: _Draft, cat: Catalog) -> None:
    """Map every override on its own; keep those that need the others (COMBINED) for later."""
    for key, o in seen.items():
        if isinstance(o.value, Unknown):
            draft.skip(o, "the value comes from a command the script runs; tune never runs it")
            continue
        if isinstance(o.value, Deferred) and not _deferred_ok(o, draft):
            continue
        problems = _missing_dollar(o, shell_vars)
        if problems:
            draft.errors += problems
            continue
        if key in COMBINED:
            draft.later[key] = o
            continue
        try:
            mapped = map_verl_override(key, o.value)
        except TuneError as e:
            draft.errors.append(f"line {o.line}: {e}")
            continue
        if isinstance(mapped, Unmapped):
            draft.unmapped.append(Unmapped(key, o.value, mapped.reason, o.line))
            if mapped.note:
                draft.notes.append(f"line {o.line}: {mapped.note}")
        else:
            _apply(mapped, o, draft, cat)


def _apply(mapped: Mapped, o: Override, draft: _Draft, cat: Catalog) -> None:
    for target, value in mapped.sets.items():
        if target in _PROCESS_COUNTS:
            draft.process_counts[target] = o  # a number: read with the other count
        elif target == "algorithm.name":
            try:
                draft.choices.algorithm = combine_algorithms(draft.choices.algorithm, value)
            except TuneError as e:
                draft.errors.append(f"line {o.line}: {e}")
        elif target in _AS_CHOICES:
            if target == "model.path":
                value = _catalogue_model(value, o.line, draft.notes, cat)
            setattr(draft.choices, _AS_CHOICES[target], value)
        else:
            draft.set(target, value)
    if mapped.note:
        draft.notes.append(f"line {o.line}: {mapped.note}")
    if mapped.dropped:
        draft.skip(o, mapped.dropped)


def _catalogue_model(model: str, line: int, notes: list[str], cat: Catalog) -> str:
    """A local copy of a catalogue model becomes its hub id (the recipe then runs anywhere)."""
    entry = cat.model_by_path(model) or (None if Path(model).expanduser().exists() else cat.model_by_basename(model))
    if entry is None or model in (entry.hf_id, entry.name):
        return model
    notes.append(f"line {line}: model '{model}' is the catalogue's {entry.hf_id}; using the hub id "
                 f"(keep your copy with --set model.path={model}).")
    return entry.hf_id or entry.name


def _whole_number(o: Override | None, default: int, errors: list[str]) -> int:
    if o is None:
        return default
    try:
        return int(o.value)
    except ValueError:
        errors.append(f"line {o.line}: {o.key}={o.value} is not a whole number.")
        return default


def _processes(draft: _Draft) -> int:
    """Processes per node and nodes as numbers; returns the world size."""
    c = draft.choices
    c.gpus = _whole_number(draft.process_counts.get("launch.n_gpus_per_node"), 1, draft.errors)
    c.nodes = _whole_number(draft.process_counts.get("launch.nnodes"), 1, draft.errors)
    return c.gpus * c.nodes


def _micro_batch_from_global(draft: _Draft, world: int, given: set[str]) -> None:
    """verl's deprecated global micro-batch count becomes a per-GPU one (unless that is given too)."""
    o = draft.later.get(_GLOBAL_MICRO)
    if o is None:
        return
    if _PER_GPU_MICRO in given:
        draft.skip(o, "deprecated in verl (global count); actor.ppo_micro_batch_size_per_gpu is given and wins")
        return
    per_gpu = max(1, _whole_number(o, world, draft.errors) // world)
    draft.sets["actor.ppo_micro_batch_size_per_gpu"] = str(per_gpu)
    draft.skip(o, f"deprecated in verl (global count): {o.value} / {world} GPUs = "
                  f"actor.ppo_micro_batch_size_per_gpu {per_gpu}")


def _mini_batch_for_processes(draft: _Draft, world: int) -> None:
    """verl splits a mini-batch over its data-parallel groups (for a Megatron card: the GPUs / TP x PP x
    CP); tunecli's FSDP2 splits it over every process. A mini-batch too small for that is raised to the
    smallest that splits (config.rules), with a note; one that cannot be raised is left to the checks."""
    keys = ("actor.ppo_mini_batch_size", "rollout.n", "data.train_batch_size")
    try:  # the script sets all three (else the defaults of `tune new` decide, and its checks judge them)
        mini, n, batch = (int(draft.sets[k]) for k in keys)
    except (KeyError, ValueError):  # unset, or a ${VAR} reference
        return
    fitted = mini_batch_that_splits(mini, n, world, batch)
    if fitted is None or fitted == mini:
        return
    draft.sets["actor.ppo_mini_batch_size"] = str(fitted)
    draft.notes.append(f"actor.ppo_mini_batch_size {mini} -> {fitted}: {mini} prompts x rollout.n {n} = {mini * n} "
                       f"samples do not split over {world} processes. verl splits a mini-batch over its data-parallel "
                       f"groups (fewer than the GPUs with Megatron's tensor/pipeline parallelism); tunecli's FSDP2 over "
                       f"every process, so {fitted} is the smallest that splits ({batch // fitted} updates a step).")


def _token_budget(draft: _Draft) -> None:
    """use_dynamic_bsz + ppo_max_token_len_per_gpu: a token budget per micro-batch, or none."""
    use_dynamic, max_tokens = draft.later.get(_DYNAMIC), draft.later.get(_MAX_TOKENS)
    if use_dynamic is not None and as_bool(use_dynamic.value):
        if max_tokens is None:
            draft.set("actor.ppo_max_token_len_per_gpu", VERL_MAX_TOKENS_PER_GPU)
            draft.notes.append(f"line {use_dynamic.line}: use_dynamic_bsz without ppo_max_token_len_per_gpu: "
                               f"verl's default {VERL_MAX_TOKENS_PER_GPU} tokens per GPU.")
        else:
            draft.set("actor.ppo_max_token_len_per_gpu", max_tokens.value)
    elif max_tokens is not None:
        draft.skip(max_tokens, COMBINED[_MAX_TOKENS])
    if use_dynamic is not None:
        draft.skip(use_dynamic, COMBINED[_DYNAMIC])


def _method_from_rank(draft: _Draft) -> None:
    rank = draft.sets.get("model.lora_rank")
    draft.choices.method = "lora" if rank not in (None, "0") else "full"
    if draft.choices.method == "full":
        draft.sets.pop("model.lora_rank", None)


def _dataset_and_reward(draft: _Draft) -> None:
    """The dataset from data.train_files; the reward from custom_reward_function, else the data's."""
    c = draft.choices
    train = draft.sets.get("data.train_files", "")
    c.dataset = "gsm8k" if "gsm8k" in train.lower() else (train or None)
    path, name = (draft.later.get(f"custom_reward_function.{k}") for k in ("path", "name"))
    if path is not None:
        c.reward = f"{path.value}:{name.value if name is not None else 'compute_score'}"
    elif name is not None:
        draft.errors.append("custom_reward_function.name is set without custom_reward_function.path.")
    elif c.dataset == "gsm8k":
        c.reward = "gsm8k"
    elif train:
        c.reward = "gsm8k_flexible"
        draft.notes.append("The data is not GSM8K and the script names no custom_reward_function: using the "
                           "gsm8k_flexible reward (last number); change it with --reward.")


def _hardware_from_name(path: Path, draft: _Draft, cat: Catalog) -> None:
    """The GPU type is not part of a verl script; its file name usually says (naming rule)."""
    stem = path.stem.lower()
    hardware = [h for h in cat.names("hardware") if re.search(rf"(?<![a-z0-9]){re.escape(h)}(?![a-z0-9])", stem)]
    if hardware:
        draft.choices.gpu_type = hardware[0]
    else:
        draft.choices.gpu_type = "h100"
        draft.notes.append("The GPU type is not in the script or its name: assuming h100 (use --gpu-type).")


def _refuse_unsupported(path: Path, seen: dict[str, Override]) -> None:
    """Vision-language models and Ascend NPUs: one sentence each, before anything else is reported."""
    model = seen.get(AR + "model.path")
    if AR + "model.path" in seen and _VISION_MODEL.search(model.value) or "data.image_key" in seen:
        what = f"the vision-language model {model.value}" if model else "images (data.image_key)"
        raise TuneError(f"{path.name} trains {what}: tunecli's trainer is text-only, so it cannot be imported.",
                        field="--from-verl")
    device = seen.get("trainer.device")
    if device is not None and device.value == "npu" or re.search(r"(?<![a-z0-9])npu(?![a-z0-9])", path.stem.lower()):
        raise TuneError(f"{path.name} runs on Ascend NPUs: tunecli has no NPU support (NVIDIA GPUs and CPUs only), "
                        "so it cannot be imported.", field="--from-verl")


def _refuse_problems(path: Path, errors: list[str]) -> None:
    if errors:
        raise TuneError(
            f"{path.name} has {len(errors)} problem(s) that make its values ambiguous: " + " ".join(errors)
            + " Fix the script and import it again.",
            field="--from-verl",
        )


def parse_env(items: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` (repeatable) as a dict; NAME is a variable name or an argument number."""
    env = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*|[1-9][0-9]*", name):
            raise TuneError(f"--env {item!r} is not NAME=VALUE with NAME a shell variable name or an argument number. "
                            "Write it as --env CKPT_DIR=/data/ckpt or --env 1=sglang.", field="--env")
        env[name] = value
    return env


def import_verl_script(path: str | Path, env: dict[str, str] | None = None) -> VerlImport:
    """The choices a verl launch script amounts to, what could not be mapped, and notes.

    ``env``: values for variables the environment or the script's arguments supply (``--env``).
    """
    path = Path(path)
    overrides, ev = read_overrides(_read_script(path), env)
    cat = load_catalog()
    seen = _last_of_each(overrides)
    _refuse_unsupported(path, seen)
    draft = _Draft(errors=list(ev.errors), notes=list(ev.notes))
    _map_each(seen, ev.vars, draft, cat)
    world = _processes(draft)
    _micro_batch_from_global(draft, world, given=set(seen))
    _mini_batch_for_processes(draft, world)
    _token_budget(draft)
    _method_from_rank(draft)
    _dataset_and_reward(draft)
    _hardware_from_name(path, draft, cat)
    if ev.env_used:
        draft.notes.append("Environment values used: " + ", ".join(f"${k}={v}" for k, v in ev.env_used.items()) + ".")
    _refuse_problems(path, draft.errors)
    draft.choices.sets = [f"{k}={v}" for k, v in draft.sets.items()]
    draft.unmapped.sort(key=lambda u: u.line)
    return VerlImport(draft.choices, draft.unmapped, draft.notes)
