"""A trained run's checkpoint -> a LoRA adapter directory and/or a merged Hugging Face model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from tunecli.config import paths
from tunecli.config.io import recipe_from_dict
from tunecli.config.schema import Recipe
from tunecli.errors import TuneError
from tunecli.trainer import checkpoint, manifest
from tunecli.trainer.policy import load_policy

EXPORT_KINDS = ("adapter", "merged", "both")
EXPORT_DTYPES = ("bfloat16", "float16", "float32")


def find_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The run's checkpoint of ``step`` (default: the newest), or a TuneError listing what exists."""
    found = paths.step_dirs(run_dir)
    ckpt = (found[-1] if found else None) if step is None else paths.step_dir(run_dir, step)
    if ckpt is not None and ckpt.is_dir():
        return ckpt
    raise TuneError(
        f"No checkpoint{'' if step is None else f' step_{step}'} in '{paths.checkpoints_dir(run_dir)}' "
        f"(found: {', '.join(p.name for p in found) or 'none'}). Pass the run directory of a `tune train` run (default runs/NAME).",
        field="RUN_DIR",
    )


def _unusable(ckpt: Path, problem: str) -> TuneError:
    others = [p.name.removeprefix("step_") for p in paths.complete_checkpoints(ckpt.parent.parent) if p != ckpt]
    fix = f"export an earlier one with --step N (finished: {', '.join(others)})" if others else "train again to write a new one"
    return TuneError(f"Cannot export {ckpt}: {problem}. Fix: {fix}.", field="--step")


def verified_recipe(ckpt: Path) -> Recipe:
    """The checkpoint's recipe, once every file matches the manifest (a TuneError otherwise)."""
    problem = manifest.verify(ckpt)
    if problem is not None:
        raise _unusable(ckpt, problem)
    return recipe_from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()), source=str(ckpt / "config.yaml"))


def load_trained(ckpt: Path, recipe: Recipe) -> Any:
    """The policy with the checkpoint's weights; a TuneError when they do not load or hold NaN or inf."""
    policy = load_policy(recipe, torch.device("cpu"), with_reference=False)
    try:
        checkpoint.load(ckpt, policy.model, None)
    except checkpoint.checkpoint_errors() as e:  # a checkpoint that verifies but does not load: another model, a torch upgrade
        raise _unusable(ckpt, f"loading its weights failed ({checkpoint.describe_error(e)})") from e
    bad = checkpoint.nonfinite_weights(policy.model)
    if bad:
        raise _unusable(ckpt, f"{len(bad)} trained weight tensor(s) hold NaN or inf (e.g. {bad[0]}), so the model is destroyed")
    return policy


def export_run(run_dir: Path, out: Path | None = None, step: int | None = None, what: str = "both",
               dtype: str | None = None) -> dict[str, Path]:
    """Write ``adapter/`` (peft, LoRA runs) and/or ``merged/`` (plain HF model, in ``dtype``; default the
    training dtype) under ``out``."""
    if what not in EXPORT_KINDS:
        raise TuneError(f"--what = {what!r}: not an export kind. Fix: use adapter, merged or both.", field="--what")
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise TuneError(f"--dtype = {dtype!r}: not an export dtype. Fix: use {', '.join(EXPORT_DTYPES)}.", field="--dtype")
    run_dir = Path(run_dir)
    ckpt = find_checkpoint(run_dir, step)
    recipe = verified_recipe(ckpt)
    is_lora = recipe.model.method == "lora"
    if what == "adapter" and not is_lora:
        raise TuneError("--what adapter: this run trained every weight (model.method full), so it has no adapter. Use --what merged.")
    out = Path(out) if out else run_dir / "export"
    policy = load_trained(ckpt, recipe)
    written: dict[str, Path] = {}
    if is_lora and what in ("adapter", "both"):
        policy.model.save_pretrained(out / "adapter")
        policy.tokenizer.save_pretrained(out / "adapter")
        written["adapter"] = out / "adapter"
    if what in ("merged", "both"):
        model = policy.model.merge_and_unload() if is_lora else policy.model
        model.config.use_cache = True  # the trainer turned it off for training passes
        if dtype is not None:  # merged in the training dtype first, then cast once
            model = model.to(getattr(torch, dtype))
        model.save_pretrained(out / "merged", safe_serialization=True)
        policy.tokenizer.save_pretrained(out / "merged")
        written["merged"] = out / "merged"
    return written


def check_can_push(repo: str) -> None:
    """Refuse a push the hub cannot take from here (offline), before anything slow or half-done."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise TuneError(f"--push-to-hub {repo}: the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1), so nothing "
                        "was pushed. Fix: push where the hub is reachable (unset HF_HUB_OFFLINE), or export without "
                        "--push-to-hub.", field="--push-to-hub")


def push_to_hub(folder: Path, repo: str, *, private: bool = False) -> str:
    """Upload ``folder`` to the hub repo ``repo`` as ONE commit (all files or none); returns its URL.
    Offline or refused: a TuneError, and nothing on the hub changed."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_can_push(repo)
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="tune export")
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TuneError(f"--push-to-hub {repo}: the upload failed ({first}); an upload is one commit, so nothing was "
                        f"half-pushed; the export is in {folder}. Fix: check the network and `hf auth login`, then "
                        f"push again.", field="--push-to-hub") from None
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo}")
