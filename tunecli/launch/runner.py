"""Run the trainer (or its launch script) as a child, stream its output, and turn Ctrl-C into a clean stop.

The child gets its own process group, so a Ctrl-C in the terminal reaches only ``tune run``, which
then decides what the child sees:

  1st Ctrl-C  SIGINT to the child's group. The trainer finishes or abandons the step, writes its
              checkpoint and exits 130; torchrun forwards the SIGINT to every worker and waits for
              them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, set long by ``plan``).
  2nd Ctrl-C  SIGINT again: the trainer's own "quit without saving".
  3rd Ctrl-C  SIGKILL to the child and every process under it (torchrun's workers live in their own
              process groups, so they are found by walking the process tree).

Output is inherited, not piped: the trainer's rich progress bar still sees a terminal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Outcome:
    returncode: int
    interrupts: int  # how many times the user asked to stop

    @property
    def interrupted(self) -> bool:
        return self.interrupts > 0


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:  # psutil missing or the process already gone
        return []


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_tree(pid: int) -> None:
    for child in _descendants(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _signal_group(pid, signal.SIGKILL)


def run_child(
    command: list[str],
    env: dict[str, str] | None = None,
    *,
    on_interrupt: Callable[[int], None] | None = None,
) -> Outcome:
    """Start ``command``, forward Ctrl-C as described above, and wait for it to end."""
    full_env = {**os.environ, **(env or {})}
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen(command, env=full_env, start_new_session=True)
    interrupts = 0

    def forward(signum, frame) -> None:
        nonlocal interrupts
        interrupts += 1
        if on_interrupt is not None:
            on_interrupt(interrupts)
        if interrupts >= 3:
            _kill_tree(proc.pid)
        else:
            # SIGTERM (from a scheduler) is passed on as it came; Ctrl-C as SIGINT.
            _signal_group(proc.pid, signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # a signal that arrived before our handler was installed
                forward(signal.SIGINT, None)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # A child killed by a signal reports -N; shells report 128+N.
    return Outcome(128 - code if code < 0 else code, interrupts)
