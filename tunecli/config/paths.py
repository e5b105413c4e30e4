"""Where a recipe's run lives on disk: the run directory and its checkpoints.

One rule for every reader: the trainer writes here, `tune run` looks here for a run to resume,
`tune export` reads from here. Plain filesystem code (no torch), so the launcher can use it.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunecli.config.schema import Recipe

CHECKPOINTS = "checkpoints"
# Written last into a checkpoint (every file's size and sha256): its presence marks a finished one.
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def run_dir(recipe: Recipe) -> Path:
    """``trainer.default_local_dir``, or ``runs/<experiment_name>`` under the current directory."""
    return Path(recipe.trainer.default_local_dir or Path("runs") / recipe.trainer.experiment_name)


def slurm_log(name: str, job_id: str = "%j") -> str:
    """A SLURM job's log, relative to the directory sbatch ran in: the sbatch file's ``--output`` (with
    SLURM's ``%j``) and where `tune run` / `tune status` look for it."""
    return f"{name}-{job_id}.log"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_dir(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step_{step}"


def checkpoint_step(path: Path) -> int | None:
    """N for a ``step_N`` directory, else None."""
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def step_dirs(run_dir: Path) -> list[Path]:
    """Every ``step_N`` directory, finished or not, oldest first (resume reports the ones it skips)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if (step := checkpoint_step(p)) is not None and p.is_dir()]
    return [p for _, p in sorted(found)]


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints (their manifest is written last), oldest first; loading verifies them."""
    return [p for p in step_dirs(run_dir) if (p / MANIFEST).is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None
