"""Checkpoints: ``RUN_DIR/checkpoints/step_N/``, written whole or not at all.

Layout of one checkpoint:
  model_optim/        torch.distributed.checkpoint (DCP) shards of the trainable weights (the LoRA
                      adapter, or every weight for full fine-tuning) and the AdamW state. DCP reshards
                      on load, so a run saved on 2 ranks resumes on 1 or 4.
  trainer_state.pt    step, data position, LR scheduler (the same on every rank)
  rng_rank{R}.pt      each rank's python/torch RNG states
  config.yaml         the exact recipe (resume refuses one that differs in the math)
  manifest.json       every file's size and sha256, written last: the mark of a finished checkpoint

Everything is written into ``.tmp-step_N``, fsync'ed and renamed at the end (``manifest.commit``): a
kill or a power loss leaves either the previous checkpoint or the new one, never half of one.
Resuming verifies the manifest and falls back to the previous good checkpoint with a warning.
Nothing non-finite is written; after each save the oldest beyond ``trainer.max_checkpoints`` go.
"""

from __future__ import annotations

import errno
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from tunecli import console
from tunecli.config import paths
from tunecli.config.keys import changed_leaves
from tunecli.config.paths import checkpoints_dir, step_dir
from tunecli.errors import TuneError
from tunecli.trainer import distributed, manifest
from tunecli.trainer.data.synthetic import GENERATORS

# Fields that can change between a checkpoint and its resumption: they do not touch the math
# (scheduling of work, logging, memory knobs, length of the run). Anything else refuses.
RESUME_SAFE_FIELDS = {
    "name",
    "actor.ppo_micro_batch_size_per_gpu",  # gradient accumulation only regroups the same sum
    "actor.param_offload",
    "actor.optimizer_offload",
    "model.enable_gradient_checkpointing",
    "model.attn_implementation",
    "actor.use_torch_compile",  # the same math, compiled
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


def held_out_from_own_file(config: dict[str, Any]) -> bool:
    """Whether the held-out rows come from data.val_files; otherwise they are carved out of the training
    data (synthetic datasets exclude the held-out questions from train), so data.val_size shapes it."""
    data = config.get("data", {})
    return data.get("dataset") not in GENERATORS and bool(data.get("val_files"))


def math_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'field: saved -> current' for every changed field that changes the training math."""
    diffs = []
    for key, (old, new) in changed_leaves(saved, current).items():
        if key == "data.val_size":
            if not held_out_from_own_file(current):
                diffs.append(f"{key}: {old!r} -> {new!r} (the held-out rows are taken out of the training data, so "
                             "the training set would change; only held-out rows from data.val_files can be resized)")
            continue
        if key in RESUME_SAFE_FIELDS:
            continue
        if key.startswith(RESUME_SAFE_SECTIONS) and key not in RESUME_MATH_FIELDS_IN_SAFE_SECTIONS:
            continue
        diffs.append(f"{key}: {old!r} -> {new!r}")
    return diffs


def schedule_difference(state: dict[str, Any], saved: dict[str, Any], current: dict[str, Any], total_steps: int) -> str | None:
    """'field: saved -> current' when a resumed run's length would reshape its LR schedule, else None.

    A cosine schedule decays over the run's total steps (or trainer.total_training_minutes), so a
    different length changes every later learning rate; a constant one does not care. ``state`` is
    the checkpoint's trainer state, ``saved`` its recipe.
    """
    if current["actor"]["lr_scheduler_type"] != "cosine":
        return None
    key = "total_training_minutes"
    old_minutes, minutes = saved.get("trainer", {}).get(key), current["trainer"].get(key)
    if old_minutes != minutes:
        keep = "unset" if old_minutes is None else f"at {old_minutes}"
        return (f"trainer.{key}: the run's length {old_minutes} -> {minutes} minutes (actor.lr_scheduler_type cosine "
                f"decays over it, so every later learning rate would change; keep it {keep} and stop early "
                "with Ctrl-C or trainer.max_minutes instead)")
    old_steps = state.get("schedule_steps")
    if old_steps is None or old_steps == total_steps:
        return None
    decided_by = "trainer.total_training_steps" if current["trainer"]["total_training_steps"] else "trainer.total_epochs"
    return (f"{decided_by}: the run's length {old_steps} -> {total_steps} steps (actor.lr_scheduler_type cosine decays "
            f"over the run's total steps, so every later learning rate would change; keep the length at {old_steps} "
            "steps and stop early with Ctrl-C or trainer.max_minutes instead)")


def check_compatible(ckpt: Path, current: dict[str, Any], state: dict[str, Any] | None = None, total_steps: int | None = None) -> None:
    """Refuse to resume ``ckpt`` under a recipe (and run length) that would train differently."""
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    diffs = math_differences(saved, current)
    if state is not None and total_steps is not None and (reshaped := schedule_difference(state, saved, current, total_steps)):
        diffs.append(reshaped)
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


def checkpoint_errors() -> tuple[type[BaseException], ...]:
    """What writing or reading a checkpoint can raise: DCP's CheckpointException is a BaseException."""
    from torch.distributed.checkpoint.api import CheckpointException  # DCP imports slowly: only when used

    return (Exception, CheckpointException)


def nonfinite_weights(model: torch.nn.Module) -> list[str]:
    """Names of the trainable tensors (this rank's shards) that hold a NaN or an inf."""
    bad = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            local = param.to_local() if hasattr(param, "to_local") else param  # an FSDP2 shard
            if not bool(torch.isfinite(local).all()):
                bad.append(name)
    return bad


def refuse_nonfinite(model: torch.nn.Module, step: int, run_dir: Path) -> None:
    """A collective: every rank refuses when any rank holds a non-finite trainable weight."""
    bad = nonfinite_weights(model)
    if distributed.all_reduce_sum(len(bad)) == 0:
        return
    latest = paths.latest_checkpoint(run_dir)
    where = f"{bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}" if bad else "on another rank"
    raise TuneError(
        f"Refusing to write checkpoint step_{step}: trainable weights hold NaN or inf ({where}), so the "
        "model is destroyed and nothing was written. The last checkpoint, "
        f"{latest or 'none yet'}, is untouched. Lower actor.lr (or look for a reward that returns NaN or inf) "
        "and run again from it, or start over with --no-resume.",
        field="actor.lr",
    )


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Write step_N atomically and durably (a collective: every rank calls it); prune the oldest beyond
    the recipe's trainer.max_checkpoints. Returns the final directory."""
    import torch.distributed.checkpoint as dcp

    refuse_nonfinite(model, step, run_dir)
    root = checkpoints_dir(run_dir)
    final, tmp = step_dir(run_dir, step), root / f".tmp-step_{step}"
    model_sd, optim_sd = _state_dicts(model, optimizer)
    needed = _tensor_bytes([model_sd, optim_sd]) * distributed.world_size()

    def start() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def write() -> None:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "model_optim"))
        torch.save(rng_state(), tmp / f"rng_rank{distributed.rank()}.pt")
        if distributed.is_main():
            torch.save(trainer_state, tmp / "trainer_state.pt")
            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def finish() -> None:
        manifest.write_manifest(tmp)  # last: fsyncs every file, then marks the checkpoint finished
        old = root / f".old-step_{step}"
        if final.exists():  # a step saved again (resumed, then stopped before its next step)
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)  # a kill before the commit leaves it here; remove_stale puts it back
        manifest.commit(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    _everywhere(start if distributed.is_main() else None, tmp, step, needed)
    _everywhere(write, tmp, step, needed)
    _everywhere(finish if distributed.is_main() else None, tmp, step, needed)
    if distributed.is_main():
        prune(run_dir, config.get("trainer", {}).get("max_checkpoints"))
    distributed.barrier()
    return final


def _everywhere(action: Callable[[], None] | None, tmp: Path, step: int, needed: int) -> None:
    """Run ``action`` on this rank (None: nothing to do here); when it failed on any rank, every rank
    removes the partial checkpoint and raises. A rank never waits for one that gave up."""
    error = None
    try:
        if action is not None:
            action()
    except checkpoint_errors() as e:  # decided below, on every rank together
        error = e
    if distributed.all_reduce_sum(float(error is not None)) == 0:
        return
    disk_full = _disk_full(error) or _free_bytes(tmp.parent) < needed
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)  # a rerun must not trip over it
    if disk_full:
        free_mb = _free_bytes(tmp.parent) // 10**6
        raise TuneError(
            f"disk full at {tmp.parent}, needed ~{max(1, round(needed / 10**6))} MB for checkpoint step_{step} "
            f"({free_mb} MB free). The partial checkpoint was removed and the earlier ones are intact. Free "
            "some space (or lower trainer.max_checkpoints, or point trainer.default_local_dir at a larger "
            "disk), then run the same command again: it resumes from the last checkpoint.",
            field="trainer.default_local_dir",
        ) from error
    if error is None:
        raise TuneError(f"Writing checkpoint step_{step} failed on another rank (its error is shown above); nothing was written.")
    raise error


def _disk_full(error: BaseException | None) -> bool:
    """ENOSPC or EDQUOT anywhere in ``error``: its causes, or the per-rank failures DCP collects."""
    if error is None:
        return False
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    nested = [failure[0] for failure in getattr(error, "failures", {}).values()]  # CheckpointException
    return any(_disk_full(e) for e in [*nested, error.__cause__, error.__context__] if e is not error)


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 62  # cannot tell: not taken for a full disk


def _tensor_bytes(tree: Any) -> int:
    """Bytes of the tensors (this rank's shards) in nested dicts and lists."""
    if isinstance(tree, torch.Tensor):
        local = tree.to_local() if hasattr(tree, "to_local") else tree
        return local.numel() * local.element_size()
    if isinstance(tree, dict):
        return sum(_tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_tensor_bytes(v) for v in tree)
    return 0


def prune(run_dir: Path, keep: int | None) -> None:
    """Delete the oldest finished checkpoints beyond the newest ``keep`` (None keeps all)."""
    if keep is None:
        return
    for old in paths.complete_checkpoints(run_dir)[:-keep]:
        trash = old.with_name(f".pruned-{old.name}")  # renamed first: a kill mid-delete leaves no half step_N
        try:
            old.rename(trash)
        except OSError as e:
            console.warning(f"Could not remove the old checkpoint {old} ({e}); trainer.max_checkpoints keeps it.")
            continue
        shutil.rmtree(trash, ignore_errors=True)


def remove_stale(run_dir: Path) -> None:
    """At start (a collective): remove what a killed run left, and put back a checkpoint it had set aside."""
    root = checkpoints_dir(run_dir)
    if distributed.is_main() and root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".old-step_") and not (root / path.name.removeprefix(".old-")).exists():
                path.rename(root / path.name.removeprefix(".old-"))  # killed between set-aside and commit
            elif path.name.startswith((".tmp-step_", ".old-step_", ".pruned-step_")):
                shutil.rmtree(path, ignore_errors=True)
    distributed.barrier()


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


def resume(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any], total_steps: int
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that verifies and loads (a collective); warn about each one skipped.

    Returns (checkpoint, trainer state), or None when the run has no checkpoint. A TuneError when it has
    some but none is usable, or when the recipe changed the math since.
    """
    skipped = []
    for ckpt in reversed(paths.step_dirs(run_dir)):
        problem = _agreed(manifest.verify(ckpt) if distributed.is_main() else None)
        state = None
        if problem is None:
            check_compatible(ckpt, config, torch.load(ckpt / "trainer_state.pt", weights_only=False), total_steps)
            try:
                state = load(ckpt, model, optimizer)
            except checkpoint_errors() as e:  # any failure to load makes this checkpoint unusable, not the run
                problem = f"loading it failed ({describe_error(e)})"
            problem = _agreed(problem)
        if problem is None:
            return ckpt, state
        skipped.append(f"{ckpt.name}: {problem}")
        if distributed.is_main():
            console.warning(f"Skipping checkpoint {ckpt}: {problem}. Trying the one before it.")
    if skipped:
        raise TuneError(
            f"Cannot resume the run in {run_dir}: none of its checkpoints is usable ({'; '.join(skipped)}). Start "
            "over with --no-resume, or put a good checkpoint back into "
            f"{checkpoints_dir(run_dir)}.",
            field="trainer.resume",
        )
    return None


def _agreed(problem: str | None) -> str | None:
    """A checkpoint is bad for every rank when any rank found it bad."""
    if distributed.all_reduce_sum(float(problem is not None)) == 0:
        return None
    return problem or "another rank could not use it"


def describe_error(error: BaseException, limit: int = 200) -> str:
    """'Type: first line' of an error; for DCP's CheckpointException, of the first rank's failure."""
    nested = [failure[0] for failure in getattr(error, "failures", {}).values()]
    error = nested[0] if nested else error
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {(lines[0] if lines else '')[:limit]}"
