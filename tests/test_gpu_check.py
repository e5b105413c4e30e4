"""benchmarks/gpu_check.sh on the CPU: its arguments, its refusal without a GPU (before installing
anything), and a loud failure, not a skip, when a GPU is listed but torch cannot use it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _fake_tools(tmp_path: Path, *, gpu_listed: bool) -> dict[str, str]:
    """A PATH whose nvidia-smi lists a GPU (or none), and a PYTHON that records any call before running."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    listing = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"' if gpu_listed else "exit 9"
    smi.write_text(f"#!/usr/bin/env bash\n{listing}\n")
    python = bin_dir / "python-spy"
    python.write_text(f'#!/usr/bin/env bash\necho "$*" >> {tmp_path / "python-calls"}\nexec {sys.executable} "$@"\n')
    for tool in (smi, python):
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(python)}


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env or dict(os.environ),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_help_and_bad_arguments():
    shown = _run("--help")
    assert shown.returncode == 0 and "gpu_check.sh [--steps N]" in shown.stdout
    for args, message in ((["--steps", "0"], "--steps must be a whole number >= 1, got '0'"),
                          (["--gpus", "two"], "--gpus must be a whole number >= 1, got 'two'"),
                          (["--steps"], "--steps needs a value"),
                          (["--fast"], "unknown argument '--fast'")):
        result = _run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr


def test_refuses_without_a_gpu_before_installing_anything(tmp_path):
    result = _run("--steps", "5", env=_fake_tools(tmp_path, gpu_listed=False))
    assert result.returncode == 3, result.stderr
    assert "no NVIDIA GPU here" in result.stderr and "Nothing was installed or run" in result.stderr
    assert not (tmp_path / "python-calls").exists()  # no pip, no python


def test_a_listed_gpu_that_torch_cannot_use_fails_loudly(tmp_path):
    """nvidia-smi sees a GPU, torch (a CPU build here) does not: FAIL in the table and exit 1, no skip."""
    env = _fake_tools(tmp_path, gpu_listed=True)
    result = _run("--no-install", "--workdir", str(tmp_path / "work"), env=env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "benchmarks/gpu_check.py --steps 5" in (tmp_path / "python-calls").read_text()
    assert "install" not in (tmp_path / "python-calls").read_text()
    lines = result.stdout.splitlines()
    assert any(line.startswith("cuda") and " FAIL " in line and "cannot use CUDA" in line for line in lines), result.stdout
    assert "FAILED" in result.stdout
    assert (tmp_path / "work" / "gpu_check.json").is_file()


def test_python_part_parses_its_arguments():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    args = gpu_check.parse_args(["--steps", "3", "--gpus", "2", "--set", "actor.lr=1e-5", "--model", "/m"])
    assert (args.steps, args.gpus, args.sets, args.model) == (3, 2, ["actor.lr=1e-5"], "/m")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "0"])
