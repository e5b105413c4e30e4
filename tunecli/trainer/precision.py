"""actor.compute_dtype ``auto``: bf16 autocast where this machine computes bf16 natively.

A GPU with bf16 gets it. A CPU gets it when its flags name a native bf16 instruction set
(AVX512-BF16 or AMX-BF16: without them torch emulates bf16 and a training step took 75x longer on
an AVX2 machine). The decision is the flags' alone, so a run and its resume always compute alike: a
timed matmul decided too at first, and under load it flipped a resumed run to fp32 (the fault-injection
test caught it). The matmul is still timed once and printed with the choice, for the user to see. Every
rank votes; bf16 only if all do, so the ranks of one run always compute alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tunecli.trainer.distributed import mixed_precision_dtype

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class ComputeChoice:
    dtype: str  # float32 | bfloat16
    reason: str  # one line for the console


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The native bf16 instruction sets the CPU reports (empty where /proc/cpuinfo is missing)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def bf16_matmul_speedup(m: int = 512, k: int = 576, n: int = 1536, repeats: int = 5) -> float:
    """fp32 time / bf16 time of an [m, k] @ [k, n] matmul (an MLP projection of a small model), best of repeats."""
    a, b = torch.randn(m, k), torch.randn(k, n)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # warm-up: the first call picks kernels
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    return best(a, b) / max(best(a.bfloat16(), b.bfloat16()), 1e-9)


def local_vote(device: torch.device) -> ComputeChoice:
    """What this process would choose on its own."""
    if device.type == "cuda":  # the same rule FSDP2's mixed precision follows
        ok = mixed_precision_dtype(device) == torch.bfloat16
        return ComputeChoice("bfloat16" if ok else "float32", "GPU with bf16" if ok else "GPU without bf16")
    if device.type != "cpu":
        return ComputeChoice("float32", f"{device.type}: fp32")
    flags = cpu_bf16_flags()
    if not flags:
        return ComputeChoice("float32", "the CPU has no native bf16 (no AVX512-BF16/AMX)")
    return ComputeChoice("bfloat16", f"{'/'.join(flags)}: bf16 matmul {bf16_matmul_speedup():.1f}x fp32 here")


def resolve_compute_dtype(setting: str, device: torch.device, all_reduce_sum=None) -> ComputeChoice:
    """actor.compute_dtype as the trainer uses it: a fixed choice is kept; ``auto`` decided by vote."""
    if setting != "auto":
        return ComputeChoice(setting, "actor.compute_dtype")
    vote = local_vote(device)
    if all_reduce_sum is not None:
        yes, ranks = all_reduce_sum(1.0 if vote.dtype == "bfloat16" else 0.0), all_reduce_sum(1.0)
        if vote.dtype == "bfloat16" and yes < ranks:
            return ComputeChoice("float32", "another rank found no fast bf16")
    return vote
