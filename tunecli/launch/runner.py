"""Run the trainer (or its launch script) as a child, stream its output, and turn Ctrl-C into a clean stop.

The child gets its own process group, so a Ctrl-C in the terminal reaches only ``tune run``, which
then decides what the child sees:

  1st Ctrl-C  SIGINT to the trainer: the process itself, or under torchrun each worker (found by its
              command line) and not torchrun. Each finishes or abandons the step, writes its
              checkpoint and leaves; the trainer reports the stop through the status file.
              torchrun is left alone because its own signal path skips the rendezvous shutdown,
              prints a traceback and can abort at exit ("terminate called without an active
              exception"); seeing its workers leave, it shuts down normally.
  2nd Ctrl-C  SIGINT again: the trainer's own "quit without saving".
  3rd Ctrl-C  SIGKILL to the child and every process under it (torchrun's workers live in their own
              sessions, so they are found by walking the process tree).

Output is inherited, not piped: the trainer's rich progress bar still sees a terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


# The trainer writes its exit code here (rank 0; see tunecli.train.report_status).
STATUS_FILE_ENV = "TUNECLI_STATUS_FILE"


@dataclass
class Outcome:
    returncode: int  # the child's, or 130 when its trainer stopped on request (see status file)
    interrupts: int  # how many times the user asked to stop

    @property
    def interrupted(self) -> bool:
        return self.interrupts > 0


def _descendants(pid: int, module: str | None = None) -> list[int]:
    """Every process under ``pid``; with ``module``, only those running ``python -m module``."""
    try:
        import psutil

        found = []
        for p in psutil.Process(pid).children(recursive=True):
            try:
                if module is None or _runs_module(p.cmdline(), module):
                    found.append(p.pid)
            except psutil.Error:  # gone meanwhile
                pass
        return found
    except Exception:  # psutil missing or the process already gone
        return []


def _runs_module(cmdline: list[str], module: str) -> bool:
    """``python [options] -m module ...``; not torchrun, whose own arguments end in ``-m module``."""
    args = iter(cmdline[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None) == module
        if not arg.startswith("-"):  # a script (e.g. bin/torchrun): the interpreter runs that
            return False
    return False


def _signal_workers(pid: int, module: str, sig: int) -> bool:
    """``sig`` to each ``python -m module`` under ``pid``; False when there is none (yet)."""
    sent = False
    for worker in _descendants(pid, module):
        try:
            os.kill(worker, sig)
            sent = True
        except (ProcessLookupError, PermissionError):
            pass
    return sent


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
    worker_module: str | None = None,
) -> Outcome:
    """Start ``command``, forward Ctrl-C as described above, and wait for it to end.

    ``worker_module``: for a torchrun job, the module its workers run; signals go to them directly.
    """
    status = Path(tempfile.mkdtemp(prefix="tunecli-")) / "status.json"
    full_env = {**os.environ, **(env or {}), STATUS_FILE_ENV: str(status)}
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
            sig = signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT
            # Before torchrun has started its workers there is no one else to tell.
            if worker_module is None or not _signal_workers(proc.pid, worker_module, sig):
                _signal_group(proc.pid, sig)

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
    code = 128 - code if code < 0 else code
    reported = _read_status(status)
    if code == 0 and reported is not None:
        code = reported  # torchrun workers that stopped on request leave with 0 (see tunecli.train)
    return Outcome(code, interrupts)


def _read_status(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["exit_code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
