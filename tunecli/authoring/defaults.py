"""From the user's choices (preset, model, hardware, ...) to a complete ``Recipe``.

Layers, lowest first:
  schema defaults < suggestions for the model size and hardware (taken from the nearest preset in
  the catalogue, so the numbers live in data) or the chosen preset < the ingredient choices
  (algorithm, method, dataset, reward, engine, launch) < ``--set`` overrides.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tunecli.catalog import PresetEntry, deep_merge, load_catalog, lookup_shape
from tunecli.config.sizes import billions
from tunecli.data.source import is_local
from tunecli.errors import TuneError
from tunecli.config.keys import get_path, put_path
from tunecli.config.io import apply_overrides, recipe_from_dict
from tunecli.authoring.naming import check_name, recipe_name
from tunecli.config.schema import EMBEDDED_MODEL, Recipe


# What the wizard shows as "defaults chosen for the model size and hardware" (and lets you edit).
TUNABLES = [
    "data.train_batch_size",
    "rollout.n",
    "data.max_prompt_length",
    "data.max_response_length",
    "actor.ppo_mini_batch_size",
    "actor.ppo_micro_batch_size_per_gpu",
    "model.lora_rank",
    "model.lora_alpha",
    "actor.lr",
    "rollout.gpu_memory_utilization",
    "rollout.tensor_model_parallel_size",
    "actor.param_offload",
    "actor.optimizer_offload",
    "model.enable_gradient_checkpointing",
]

# Preset values that are "how to train a model of this size here" (copied into suggestions).
_SHAPE_KEYS = {
    "model": ["lora_rank", "lora_alpha", "target_modules", "enable_gradient_checkpointing", "dtype"],
    "data": ["train_batch_size", "max_prompt_length", "max_response_length", "filter_overlong_prompts"],
    "actor": [
        "lr", "ppo_mini_batch_size", "ppo_micro_batch_size_per_gpu", "ppo_max_token_len_per_gpu", "use_kl_loss",
        "kl_loss_coef", "kl_loss_type", "entropy_coeff", "param_offload", "optimizer_offload",
    ],
    "rollout": [
        "n", "gpu_memory_utilization", "tensor_model_parallel_size", "max_num_seqs", "dtype", "enable_sleep_mode",
        "enforce_eager",
    ],
    "trainer": ["total_epochs", "total_training_steps", "save_freq", "test_freq", "device"],
}


@dataclass
class Choices:
    """The answers of the wizard (or the flags of `tune new`); None = not chosen."""

    preset: str | None = None
    model: str | None = None
    algorithm: str | None = None
    method: str | None = None
    gpus: int | None = None  # processes per node
    gpu_type: str | None = None
    nodes: int | None = None
    strategy: str | None = None
    engine: str | None = None
    dataset: str | None = None
    reward: str | None = None
    name: str | None = None
    launcher: str | None = None
    model_size: str | None = None  # model.size: when the model's shape cannot be read here
    sets: list[str] = field(default_factory=list)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def merged_over(self, other: Choices) -> Choices:
        """These choices, falling back to ``other`` for what is unset (sets are concatenated)."""
        out = copy.deepcopy(other)
        for k in self.keys():
            v = getattr(self, k)
            if k == "sets":
                out.sets = [*other.sets, *v]
            elif v is not None:
                setattr(out, k, v)
        return out


def model_path_for(choice: str) -> str:
    """A model choice as model.path: catalogue names become hub ids (the embedded one stays an alias)."""
    entry = load_catalog().model_by_path(choice)
    if entry is None:
        return choice
    return entry.name if entry.embedded else (entry.hf_id or entry.name)


def nearest_preset(params: int, method: str, kind: str) -> PresetEntry:
    """The catalogue preset closest in model size with the same method and device kind."""
    cat = load_catalog()
    pool = []
    for p in cat.presets:
        hw = cat.find("hardware", p.hardware)
        if hw is None or hw.kind != kind or p.recipe.get("model", {}).get("method", "lora") != method:
            continue
        shape = cat.model_by_path(p.recipe.get("model", {}).get("path", EMBEDDED_MODEL))
        if shape is not None:
            pool.append((abs(math.log(shape.params / max(params, 1))), p))
    if not pool:  # e.g. full fine-tuning on a CPU: no such preset; fall back to any of the kind
        pool = [(0.0, p) for p in cat.presets if getattr(cat.find("hardware", p.hardware), "kind", None) == kind]
    return min(pool, key=lambda t: t[0])[1]


def size_hint(model: str, size: str | None, kind: str) -> int:
    """Parameters of a model whose shape is unknown here: model.size, a size in its name (Qwen3-8B-Base),
    else a middle guess for the device kind (the check's warning says the estimate is unknown)."""
    found = re.search(r"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)[bB](?![a-zA-Z])", model.rsplit("/", 1)[-1])
    if size:
        return int(billions(size) * 1e9)
    if found:
        return int(float(found.group(1)) * 1e9)
    return int(7e9 if kind == "gpu" else 0.135e9)


def suggest(model: str, hardware: str, method: str, world: int, *, revision: str | None = None,
            size: str | None = None) -> dict[str, Any]:
    """Tunable values for this model size, method and hardware (nested partial recipe)."""
    cat = load_catalog()
    hw = cat.get("hardware", hardware, field="--gpu-type")
    shape, _ = lookup_shape(model, revision)
    ref = nearest_preset(shape.params if shape else size_hint(model, size, hw.kind), method, hw.kind)
    out: dict[str, Any] = {}
    for section, keys in _SHAPE_KEYS.items():
        for k in keys:
            if k in ref.recipe.get(section, {}):
                put_path(out, f"{section}.{k}", copy.deepcopy(ref.recipe[section][k]))
    _fit_batches(out, ref, world)
    # Tensor parallelism: at most the preset's, dividing both the GPU count and the attention heads.
    tp_ref = int(get_path(out, "rollout.tensor_model_parallel_size", 1))
    heads = shape.heads if shape else 1 << 10  # unknown heads: any power of two up to the GPU count
    tp = max(d for d in range(1, world + 1) if world % d == 0 and d <= tp_ref and heads % d == 0)
    put_path(out, "rollout.tensor_model_parallel_size", tp)
    if method == "lora" and not get_path(out, "model.lora_rank"):
        put_path(out, "model.lora_rank", 32 if hw.kind == "gpu" else 16)
    return out


def _fit_batches(out: dict[str, Any], ref: PresetEntry, world: int) -> None:
    """Scale the preset's batch to this many processes, keeping its per-process share and its
    updates per step, then make mini- and micro-batches divide evenly (the checks' rules)."""
    ref_batch = get_path(ref.recipe, "data.train_batch_size", 8)
    per_rank = max(1, ref_batch // ref.gpus)
    batch = per_rank * world
    updates = max(1, ref_batch // get_path(ref.recipe, "actor.ppo_mini_batch_size", ref_batch))
    mini = batch // updates if batch % updates == 0 else batch
    n = get_path(out, "rollout.n", 1)
    if (mini * n) % world:
        mini = batch  # one update per step always splits: batch is a multiple of world
    samples_per_rank = mini * n // world
    micro = get_path(out, "actor.ppo_micro_batch_size_per_gpu", samples_per_rank)
    micro = max(d for d in range(1, samples_per_rank + 1) if samples_per_rank % d == 0 and d <= micro)
    put_path(out, "data.train_batch_size", batch)
    put_path(out, "actor.ppo_mini_batch_size", mini)
    put_path(out, "actor.ppo_micro_batch_size_per_gpu", micro)


def _apply_settings(data: dict[str, Any], settings: dict[str, Any]) -> None:
    for k, v in settings.items():
        put_path(data, k, copy.deepcopy(v))


def _named_entry(menu: str, name: str, flag: str, custom_needs: str):
    """The catalogue entry ``name`` of ``menu``; 'custom' is a menu item, not a value, and is refused."""
    entry = load_catalog().get(menu, name, field=flag)
    if entry.name == "custom":
        raise TuneError(f"{flag} custom needs {custom_needs}.", field=flag)
    return entry


def _dataset_choice(data: dict[str, Any], dataset: str) -> None:
    entry = load_catalog().find("datasets", dataset)
    if entry is None and (is_local(dataset) or "/" in dataset):
        path = Path(dataset).expanduser()
        local = is_local(dataset)
        train = str(path.resolve()) if path.exists() else dataset
        # GSM8K (original jsonl, verl parquet, or openai/gsm8k on the Hub) keeps the gsm8k loader and reward.
        is_gsm8k = "gsm8k" in dataset.lower()
        put_path(data, "data.dataset", "gsm8k" if is_gsm8k else "custom")
        put_path(data, "data.train_files", train)
        if not local:  # a hub dataset: its test split is held out
            put_path(data, "data.val_files", dataset)
            if is_gsm8k and not get_path(data, "data.subset"):
                put_path(data, "data.subset", "main")  # openai/gsm8k has two subsets: main and socratic
            return
        test = next((p for p in (path.with_name(f"test{path.suffix}"),) if p != path and p.exists()), None)
        if is_gsm8k and test is not None:
            put_path(data, "data.val_files", str(test.resolve()))
        return
    entry = _named_entry("datasets", dataset, "--dataset", "the file itself: pass its path instead, e.g. --dataset "
                         "data/my.jsonl (with --set data.prompt_key=... --set data.answer_key=... if the columns differ)")
    put_path(data, "data.dataset", entry.name)
    if entry.kind == "file":
        if entry.train_files and not get_path(data, "data.train_files"):
            put_path(data, "data.train_files", entry.train_files)
        if entry.val_files and not get_path(data, "data.val_files"):
            put_path(data, "data.val_files", entry.val_files)


def _reward_choice(data: dict[str, Any], reward: str) -> None:
    if ":" in reward and reward.rsplit(":", 1)[0].endswith(".py"):
        file, func = reward.rsplit(":", 1)
        # Absolute, so NAME.sh works from any directory.
        path = Path(file).expanduser()
        put_path(data, "reward.function", f"{path.resolve()}:{func}" if path.is_file() else reward)
        return
    entry = _named_entry("rewards", reward, "--reward", "the function itself: pass path/to/file.py:function, e.g. "
                         "--reward rewards.py:my_reward (signature: prompt, completion, ground_truth, **kwargs)")
    put_path(data, "reward.function", entry.name)


def _int_choice(value: Any, flag: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(value).strip() not in (str(n), f"+{n}"):
        raise TuneError(f"{flag} '{value}' must be a whole number >= 1, e.g. {flag} 2.", field=flag)
    return n


def _set_value(sets: list[str], key: str) -> str | None:
    """The last --set KEY=VALUE's value for ``key`` (read before the sets are applied)."""
    values = [s.split("=", 1)[1].strip() for s in sets if "=" in s and s.split("=", 1)[0].strip() == key]
    return values[-1] if values and values[-1] not in ("", "null", "None") else None


def _model_facts(choices: Choices, base: dict[str, Any]) -> dict[str, str | None]:
    """model.revision and model.size as the suggestions need them (--model-size goes into the recipe)."""
    if choices.model_size:
        try:
            billions(choices.model_size)
        except ValueError as e:
            raise TuneError(f"--model-size: {e}. Fix: give the parameter count such as 8B, 1.5B or 500M.",
                            field="--model-size") from None
        put_path(base, "model.size", choices.model_size)
    return {"revision": _set_value(choices.sets, "model.revision") or get_path(base, "model.revision", None),
            "size": _set_value(choices.sets, "model.size") or get_path(base, "model.size", None)}


def build_recipe(choices: Choices) -> tuple[Recipe, PresetEntry | None]:
    """The full recipe for these choices (validated by the schema; not yet checked for feasibility)."""
    cat = load_catalog()
    preset = cat.preset(choices.preset) if choices.preset else None
    base: dict[str, Any] = copy.deepcopy(preset.recipe) if preset else {}

    model = model_path_for(choices.model) if choices.model else get_path(base, "model.path", EMBEDDED_MODEL)
    hardware = choices.gpu_type or get_path(base, "launch.hardware", "cpu")
    hw = cat.get("hardware", hardware, field="--gpu-type")
    method = choices.method or get_path(base, "model.method", "lora")
    cat.get("methods", method, field="--method")
    per_node = _int_choice(choices.gpus, "--gpus") if choices.gpus is not None else get_path(base, "launch.n_gpus_per_node", 1)
    nodes = _int_choice(choices.nodes, "--nodes") if choices.nodes is not None else get_path(base, "launch.nnodes", 1)
    world = per_node * nodes
    model_facts = _model_facts(choices, base)

    if preset is None:
        base = deep_merge(suggest(model, hardware, method, world, **model_facts), base)
        _apply_settings(base, cat.get("algorithms", choices.algorithm or "grpo", field="--algorithm").settings)
        _dataset_choice(base, choices.dataset or "arithmetic")
        if not choices.reward:
            default = cat.get("datasets", get_path(base, "data.dataset"), field="--dataset").default_reward
            if default is None:
                raise TuneError(
                    f"--dataset '{choices.dataset}' is your own file, so tune cannot guess how to score it: pass "
                    "--reward gsm8k_flexible (the last number must match the answer column), --reward format "
                    "with --set reward.format_pattern=REGEX, or --reward path/to/file.py:function.",
                    field="--reward",
                )
            _reward_choice(base, default)
    else:
        # A preset whose model, hardware, method or size is changed gets the size-dependent values
        # for the new shape (its other values, e.g. dataset and run length, stay).
        preset_shape = (get_path(base, "model.path", EMBEDDED_MODEL), get_path(base, "launch.hardware", "cpu"),
                        get_path(base, "model.method", "lora"), preset.gpus)
        if (model, hw.name, method, world) != preset_shape:
            base = deep_merge(base, suggest(model, hardware, method, world, **model_facts))
        if choices.algorithm:
            _apply_settings(base, cat.get("algorithms", choices.algorithm, field="--algorithm").settings)
        if choices.dataset:
            _dataset_choice(base, choices.dataset)
            entry = cat.find("datasets", get_path(base, "data.dataset"))
            if not choices.reward and entry is not None and entry.default_reward:
                _reward_choice(base, entry.default_reward)
    if choices.reward:
        _reward_choice(base, choices.reward)

    put_path(base, "model.path", model)
    if method != get_path(base, "model.method"):
        _apply_settings(base, cat.get("methods", method, field="--method").settings)
        if method == "lora" and not get_path(base, "model.lora_rank"):
            put_path(base, "model.lora_rank", suggest(model, hardware, method, world, **model_facts)["model"]["lora_rank"])
    put_path(base, "model.method", method)
    if choices.engine:
        cat.get("engines", choices.engine, field="--engine")
    put_path(base, "rollout.name", choices.engine or get_path(base, "rollout.name", "vllm"))
    # FSDP2 also on one GPU: it is what offloads weights and optimizer state to the CPU.
    strategy = choices.strategy or ("fsdp2" if world > 1 or hw.kind == "gpu" else "none")
    cat.get("strategies", strategy, field="--strategy")
    put_path(base, "launch.strategy", strategy)
    put_path(base, "launch.hardware", hw.name)
    put_path(base, "launch.n_gpus_per_node", per_node)
    put_path(base, "launch.nnodes", nodes)
    if choices.launcher:
        put_path(base, "launch.launcher", choices.launcher)
    put_path(base, "trainer.device", "cpu" if hw.kind == "cpu" else "cuda")

    # --set last: it may change anything, including the launch section.
    data = apply_overrides(base, choices.sets)
    recipe = recipe_from_dict(data, source="recipe")
    name = check_name(choices.name) if choices.name else recipe_name(recipe)
    explicit_experiment = any(s.split("=", 1)[0].strip() == "trainer.experiment_name" for s in choices.sets)
    data = recipe.model_dump(mode="json")
    data["name"] = name
    if not explicit_experiment:
        data["trainer"]["experiment_name"] = name
    if not any(s.split("=", 1)[0].strip() == "rollout.max_model_len" for s in choices.sets) and get_path(base, "rollout.max_model_len") is None:
        data["rollout"]["max_model_len"] = None  # derived again from the final lengths
    return recipe_from_dict(data, source="recipe"), preset
