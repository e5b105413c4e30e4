"""The layering of pyproject.toml's import-linter contracts holds, and breaking it fails the suite."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # this tree's tunecli, not the installed one
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_trainer_module_importing_the_cli_breaks_the_contracts(tmp_path):
    shutil.copytree(REPO / "tunecli", tmp_path / "tunecli", symlinks=True)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    loop = tmp_path / "tunecli" / "trainer" / "loop.py"
    loop.write_text(loop.read_text() + "\nfrom tunecli.cli import console as _console  # a wrong-way import\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "Nothing imports the CLI" in result.stdout and "BROKEN" in result.stdout
    assert "tunecli.trainer.loop -> tunecli.cli" in result.stdout


def _python_files() -> list[Path]:
    return sorted((REPO / "tunecli").rglob("*.py"))


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has {len(text.splitlines())} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: {', '.join(long)}"
