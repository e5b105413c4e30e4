"""Checkpoints: ``RUN_DIR/checkpoints/step_N/``, written whole or not at all.

Layout of one checkpoint:
  model_optim/        torch.distributed.checkpoint (DCP) shards of the trainable weights (the LoRA
                      adapter, or every weight for full fine-tuning) and the AdamW state. DCP reshards
                      on load, so a run saved on 2 ranks resumes on 1 or 4.
  trainer_state.pt    step, data position, LR scheduler (the same on every rank)
  rng_rank{R}.pt      each rank's python/torch RNG states
  config.yaml         the exact recipe (resume refuses one that differs in the math)

Everything is written into ``.tmp-step_N`` and renamed at the end: a kill leaves either the previous
checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from tunecli.config.keys import changed_leaves
from tunecli.config.paths import checkpoints_dir, step_dir
from tunecli.errors import TuneError
from tunecli.trainer import distributed

# Fields that can change between a checkpoint and its resumption: they do not touch the math
# (scheduling of work, logging, memory knobs, length of the run). Anything else refuses.
RESUME_SAFE_FIELDS = {
    "name",
    "data.val_size",
    "actor.ppo_micro_batch_size_per_gpu",  # gradient accumulation only regroups the same sum
    "actor.param_offload",
    "actor.optimizer_offload",
    "model.enable_gradient_checkpointing",
    "model.attn_implementation",
    "rollout.name",
    "rollout.gpu_memory_utilization",
    "rollout.tensor_model_parallel_size",
    "rollout.max_model_len",
    "rollout.max_num_seqs",
    "rollout.max_num_batched_tokens",
    "rollout.enforce_eager",
    "rollout.enable_sleep_mode",
    "rollout.lora_sync",
    "rollout.dtype",
}
RESUME_SAFE_SECTIONS = ("trainer.", "launch.")
RESUME_MATH_FIELDS_IN_SAFE_SECTIONS = {"trainer.seed"}
# DCP in a single process (no process group) is intended here: one code path for 1 or N ranks.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def math_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'field: saved -> current' for every changed field that changes the training math."""
    diffs = []
    for key, (old, new) in changed_leaves(saved, current).items():
        if key in RESUME_SAFE_FIELDS:
            continue
        if key.startswith(RESUME_SAFE_SECTIONS) and key not in RESUME_MATH_FIELDS_IN_SAFE_SECTIONS:
            continue
        diffs.append(f"{key}: {old!r} -> {new!r}")
    return diffs


def check_compatible(ckpt: Path, current: dict[str, Any]) -> None:
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    diffs = math_differences(saved, current)
    if diffs:
        raise TuneError(
            f"Cannot resume from {ckpt}: the recipe changed in fields that change the training math "
            f"({'; '.join(diffs)}). Restore those values, start over with --no-resume, or give the run "
            "another directory (trainer.default_local_dir or trainer.experiment_name).",
            field=diffs[0].split(":")[0],
        )


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dict_options(loading: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen base weights are not saved (they are the model.path weights): a LoRA checkpoint is the
    # adapter plus its optimizer state. Loading is then non-strict about the frozen keys only: the
    # trainable ones come from get_state_dict of this very model, so DCP fails if any is missing.
    return StateDictOptions(ignore_frozen_params=True, strict=not loading)


def _without_frozen(model: torch.nn.Module, model_sd: dict[str, Any]) -> dict[str, Any]:
    """Drop every name of a frozen parameter, aliases included.

    ``ignore_frozen_params`` walks ``named_parameters()``, which lists a shared tensor once, so the
    second name of a tied weight (a LoRA model's frozen lm_head, tied to the embeddings: 113 MB of
    SmolLM2-135M) stayed in every checkpoint.
    """
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in model_sd.items() if k not in frozen}


def _state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a checkpoint holds (the same selection on save and load): trainable weights + optimizer."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_dict_options())
    return _without_frozen(model, model_sd), optim_sd


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Write step_N atomically (a collective: every rank calls it). Returns the final directory."""
    import torch.distributed.checkpoint as dcp

    root = checkpoints_dir(run_dir)
    final, tmp = step_dir(run_dir, step), root / f".tmp-step_{step}"
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    model_sd, optim_sd = _state_dicts(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "model_optim"))
    torch.save(rng_state(), tmp / f"rng_rank{distributed.rank()}.pt")
    if distributed.is_main():
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    distributed.barrier()
    if distributed.is_main():
        old = root / f".old-step_{step}"
        if final.exists():
            final.rename(old)
        os.replace(tmp, final)  # the commit point
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def load(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore weights, optimizer and this rank's RNG in place; return the trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        model_sd = _without_frozen(model, get_model_state_dict(model, options=_state_dict_options()))
        dcp.load({"model": model_sd}, checkpoint_id=str(ckpt / "model_optim"))
        set_model_state_dict(model, model_sd, options=_state_dict_options(loading=True))
        return torch.load(ckpt / "trainer_state.pt", weights_only=False)
    model_sd, optim_sd = _state_dicts(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(ckpt / "model_optim"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=_state_dict_options(loading=True))
    rng_file = ckpt / f"rng_rank{distributed.rank()}.pt"
    if rng_file.is_file():  # a run resumed on more ranks than it was saved with seeds the new ones fresh
        set_rng_state(torch.load(rng_file, weights_only=False))
    return torch.load(ckpt / "trainer_state.pt", weights_only=False)
