"""The recipe naming rule: ``[model]_[algo][-lora]_[gpus]_[gpu type]_[strategy]_[engine]``.

verl applies it loosely; we apply it strictly, e.g. ``qwen2.5-1.5b_grpo-lora_1_h100_fsdp_vllm`` or
``smollm2-135m_grpo-lora_1_cpu_none_vllm``. ``fsdp2`` is written ``fsdp`` as in verl's file names.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunecli.config.schema import NAME_RE
from tunecli.errors import TuneError

_STRATEGY_IN_NAME = {"fsdp2": "fsdp", "none": "none"}


def model_short_name(path: str) -> str:
    """Catalogue name for catalogue models, else the last path part, lowercased and made name-safe."""
    from tunecli.catalog import load_catalog

    entry = load_catalog().model_by_path(path)
    if entry is not None:
        return entry.name
    base = Path(path.rstrip("/")).name or "model"
    base = re.sub(r"(?i)-instruct$", "", base)
    return re.sub(r"[^a-z0-9.-]+", "-", base.lower()).strip("-.") or "model"


def recipe_name(recipe) -> str:
    algo = recipe.algorithm.name + ("-lora" if recipe.model.method == "lora" else "")
    launch = recipe.launch
    parts = [
        model_short_name(recipe.model.path),
        algo,
        str(launch.world_size),
        launch.hardware,
        _STRATEGY_IN_NAME.get(launch.strategy, launch.strategy),
        recipe.rollout.name,
    ]
    return "_".join(parts)


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or name in (".", ".."):
        raise TuneError(
            f"--name '{name}' cannot be used as a file name: use letters, digits, '.', '_' and '-' only "
            "(at most 128, starting with a letter or digit), e.g. my-run_1.",
            field="name",
        )
    return name
