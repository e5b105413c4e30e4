"""actor.compute_dtype auto: bf16 only with native bf16 flags, a faster timed matmul, and every rank agreeing."""

from __future__ import annotations

import torch

from tunecli.config.io import recipe_from_dict
from tunecli.trainer import precision
from tunecli.trainer.precision import ComputeChoice, cpu_bf16_flags, local_vote, resolve_compute_dtype

CPU = torch.device("cpu")


def test_auto_is_the_default():
    assert recipe_from_dict({}, []).actor.compute_dtype == "auto"


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_bf16_flags(info) == ["avx512_bf16"]
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert cpu_bf16_flags(info) == []
    assert cpu_bf16_flags(tmp_path / "missing") == []


def test_no_native_bf16_means_fp32_without_timing(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: (_ for _ in ()).throw(AssertionError("timed")))
    choice = local_vote(CPU)
    assert choice.dtype == "float32" and "no native bf16" in choice.reason


def test_native_bf16_decides_alone_and_the_timed_matmul_is_only_shown(monkeypatch):
    """A timing under load must never flip a run (or its resume) to another dtype."""
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["amx_bf16"])
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: 0.9)
    assert local_vote(CPU) == ComputeChoice("bfloat16", "amx_bf16: bf16 matmul 0.9x fp32 here")
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: 3.9)
    assert local_vote(CPU) == ComputeChoice("bfloat16", "amx_bf16: bf16 matmul 3.9x fp32 here")


def test_a_fixed_setting_is_kept_and_never_timed(monkeypatch):
    monkeypatch.setattr(precision, "local_vote", lambda d: (_ for _ in ()).throw(AssertionError("voted")))
    assert resolve_compute_dtype("float32", CPU).dtype == "float32"
    assert resolve_compute_dtype("bfloat16", CPU).dtype == "bfloat16"


def test_ranks_agree_bf16_only_when_every_rank_votes_for_it(monkeypatch):
    monkeypatch.setattr(precision, "local_vote", lambda d: ComputeChoice("bfloat16", "fast"))
    two_ranks_one_yes = iter([1.0, 2.0])  # yes votes summed, then ranks summed
    assert resolve_compute_dtype("auto", CPU, lambda v: next(two_ranks_one_yes)).dtype == "float32"
    two_ranks_both_yes = iter([2.0, 2.0])
    assert resolve_compute_dtype("auto", CPU, lambda v: next(two_ranks_both_yes)).dtype == "bfloat16"


def test_the_probe_measures_a_real_ratio():
    ratio = precision.bf16_matmul_speedup(m=64, k=64, n=64, repeats=2)
    assert ratio > 0 and ratio != float("inf")
