"""A trained run's checkpoint -> a LoRA adapter directory and/or a merged Hugging Face model."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from tunecli.config import paths
from tunecli.config.io import recipe_from_dict
from tunecli.errors import TuneError
from tunecli.trainer import checkpoint
from tunecli.trainer.policy import load_policy

EXPORT_KINDS = ("adapter", "merged", "both")


def find_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The run's checkpoint of ``step`` (default: the latest), or a TuneError listing what exists."""
    ckpt = paths.latest_checkpoint(run_dir) if step is None else paths.step_dir(run_dir, step)
    if ckpt is not None and (ckpt / "config.yaml").is_file():
        return ckpt
    found = [p.name for p in paths.complete_checkpoints(run_dir)]
    raise TuneError(
        f"No checkpoint{'' if step is None else f' step_{step}'} in '{paths.checkpoints_dir(run_dir)}' "
        f"(found: {', '.join(found) or 'none'}). Pass the run directory of a `tune train` run (default runs/NAME).",
        field="RUN_DIR",
    )


def export_run(run_dir: Path, out: Path | None = None, step: int | None = None, what: str = "both") -> dict[str, Path]:
    """Write ``adapter/`` (peft, LoRA runs) and/or ``merged/`` (plain HF model) under ``out``."""
    if what not in EXPORT_KINDS:
        raise TuneError(f"--what = {what!r}: not an export kind. Fix: use adapter, merged or both.", field="--what")
    run_dir = Path(run_dir)
    ckpt = find_checkpoint(run_dir, step)
    recipe = recipe_from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()), source=str(ckpt / "config.yaml"))
    is_lora = recipe.model.method == "lora"
    if what == "adapter" and not is_lora:
        raise TuneError("--what adapter: this run trained every weight (model.method full), so it has no adapter. Use --what merged.")
    out = Path(out) if out else run_dir / "export"
    policy = load_policy(recipe, torch.device("cpu"), with_reference=False)
    checkpoint.load(ckpt, policy.model, None)
    written: dict[str, Path] = {}
    if is_lora and what in ("adapter", "both"):
        policy.model.save_pretrained(out / "adapter")
        policy.tokenizer.save_pretrained(out / "adapter")
        written["adapter"] = out / "adapter"
    if what in ("merged", "both"):
        model = policy.model.merge_and_unload() if is_lora else policy.model
        model.config.use_cache = True  # the trainer turned it off for training passes
        model.save_pretrained(out / "merged", safe_serialization=True)
        policy.tokenizer.save_pretrained(out / "merged")
        written["merged"] = out / "merged"
    return written
