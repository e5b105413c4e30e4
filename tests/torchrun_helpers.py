"""Starting torchrun from tests: free ports, a hard timeout that kills the whole process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def torchrun_cmd(*args: str, nproc: int = 2, standalone: bool = True) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    return cmd + (["--standalone"] if standalone else []) + list(args)


def run(cmd: list[str], *, timeout: float, cwd: Path | str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill the group (torchrun's workers too)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env or worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{out[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def small_recipe(model_dir: Path | str, name: str = "small", **sections: dict) -> "Recipe":  # noqa: F821
    """A recipe that trains the tiny model in seconds: 4 prompts x 2 greedy samples, 6 new tokens,
    two mini-batches (optimizer steps) per training step.

    Greedy sampling makes the rollouts the same whatever the number of ranks (a sampled rollout
    depends on each rank's RNG stream), so runs on 1 and 2 processes can be compared number for
    number. Every group is then tied (zero advantage); the entropy bonus and the KL term still move
    the adapter, through the same normalisation path as the policy-gradient term.
    """
    from tunecli.config.io import recipe_from_dict

    data = {
        "name": name,
        "model": {"path": str(model_dir), "method": "lora", "lora_rank": 4, "lora_alpha": 8},
        "data": {"dataset": "arithmetic", "train_size": 16, "val_size": 2, "train_batch_size": 4,
                 "max_prompt_length": 96, "max_response_length": 6},
        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2, "lr": 0.01, "entropy_coeff": 0.01},
        "rollout": {"name": "hf", "n": 2, "temperature": 0.0},
        "trainer": {"total_training_steps": 3, "val_before_train": False, "experiment_name": name, "save_freq": 1},
        "launch": {"strategy": "fsdp2", "n_gpus_per_node": 2},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return recipe_from_dict(data)


def write_recipe(recipe, out_dir: Path) -> tuple[Path, Path]:
    """NAME.yaml + NAME.sh exactly as `tune new` writes them."""
    from tunecli.authoring import render

    return render.write_files(render.render(recipe, out_dir=out_dir), out_dir)


def read_metrics(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl -> {step: training metrics} (validation lines left out). A training line always has
    its step time; the actor's statistics are missing when the step took no optimizer step."""
    import json

    rows = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "timing/step_s" in row:
            rows[row["step"]] = row
    return rows


def checkpoint_weights(ckpt_dir: Path, tmp: Path) -> dict:
    """The trained weights of a DCP checkpoint (any number of shards) as full tensors."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{Path(ckpt_dir).parent.parent.name}-{Path(ckpt_dir).name}.pt"  # RUN-step_N.pt
    dcp_to_torch_save(str(Path(ckpt_dir) / "model_optim"), str(out))
    return torch.load(out, weights_only=False)["model"]


def tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from tunecli.cli import main; main()", *args]
