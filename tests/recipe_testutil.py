"""Helpers shared by the recipe tests (wizard, catalogue, checks, rendering)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


def tune(*args, env: dict[str, str] | None = None):
    """Run the `tune` app in-process (stdin is not a TTY); returns the click Result."""
    from tunecli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120", **(env or {})},
                              catch_exceptions=False)


def tune_subprocess(*args, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60):
    """Run the installed `tune` console script with stdin closed."""
    return subprocess.run(["tune", *map(str, args)], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def flat(text: str) -> str:
    """Output with rich's line wrapping undone (for substring checks)."""
    return " ".join(text.split())


def train_in_process(config: Path) -> int:
    """`tunecli.train.train` on CONFIG in this process, restoring the signal handlers it installs."""
    from tunecli.train import train

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return train(str(config), [], command=["python", "-m", "tunecli.train", "--config", str(config)])
    finally:  # the trainer's Ctrl-C handler must not outlive the run in this test process
        for s, handler in handlers.items():
            signal.signal(s, handler)
