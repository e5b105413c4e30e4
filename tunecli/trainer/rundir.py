"""The run directory: one run at a time, nothing deleted without the user's say.

``claim`` is what ``Trainer.setup`` calls before the model loads. Rank 0:
  1. creates the run directory, or explains in one paragraph why it cannot (an unwritable place, a
     path under a regular file), naming the recipe field that chose it;
  2. takes its lock, ``RUN_DIR/.lock``: ``fcntl.flock`` on the open file plus a record of the owner
     (pid, host, start time, command). The kernel frees a flock when its owner dies, even by SIGKILL,
     so a lock that is still held belongs to a live run (refused), and a free one left by a dead
     process of this host is stale (reported, taken over: resuming after a crash needs no flag). A
     free lock of another host (a shared filesystem) cannot be checked from here: ``--break-lock``;
  3. starting over (``--no-resume``): moves every entry but the lock into ``RUN_DIR.N`` (the next
     free N) so that nothing is lost, or deletes them when ``--overwrite`` says so.
Every rank learns through one collective whether that worked, and they all raise together.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import itertools
import json
import os
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunecli import console
from tunecli.config import paths
from tunecli.config.schema import Recipe
from tunecli.errors import TuneError, field_error
from tunecli.trainer import distributed

LOCK_NAME = ".lock"


@dataclass
class RunLock:
    """A held lock; ``release`` removes the file, then lets go of the flock."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # an unremovable lock file is free all the same once the flock goes
        finally:
            os.close(self.fd)
            self.fd = None


def claim(recipe: Recipe, *, resume: bool, overwrite: bool, break_lock: bool) -> tuple[Path, RunLock | None]:
    """The run directory, locked by rank 0 (the lock is None on the other ranks); a collective."""
    run_dir = paths.run_dir(recipe)
    lock, error = None, None
    if distributed.is_main():
        try:
            lock = acquire(run_dir, recipe, break_lock=break_lock)
            if not resume:
                start_over(run_dir, overwrite=overwrite)
        except Exception as e:  # noqa: BLE001  every rank must hear of it before anyone raises
            error = e
            if lock is not None:
                lock.release()
    if distributed.all_reduce_sum(float(error is not None)):
        if error is not None:
            raise error
        raise TuneError(f"Rank 0 could not claim the run directory {run_dir}; its message above says why.")
    return run_dir, lock


# ---------------------------------------------------------------------------------------------
# The directory and its lock
# ---------------------------------------------------------------------------------------------


def acquire(run_dir: Path, recipe: Recipe, *, break_lock: bool = False) -> RunLock:
    """Create ``run_dir`` and take its lock, or raise a TuneError that says who holds it."""
    path = Path(run_dir) / LOCK_NAME
    while True:
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise unwritable_error(recipe, Path(run_dir), e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise busy_error(recipe, Path(run_dir), owner) from None
        except OSError:
            pass  # a filesystem without flock (ENOLCK): the owner's record alone decides
        if _same_file(fd, path):
            break
        os.close(fd)  # the owner removed this file as we opened it: take the new one
    try:
        _check_previous_owner(recipe, Path(run_dir), _read_owner(fd), break_lock)
        _write_owner(fd)
    except OSError as e:
        os.close(fd)
        raise unwritable_error(recipe, Path(run_dir), e) from None
    except BaseException:
        os.close(fd)
        raise
    return RunLock(path, fd)


def _check_previous_owner(recipe: Recipe, run_dir: Path, owner: dict[str, Any], break_lock: bool) -> None:
    """A free lock that still names an owner: take it over when that owner is surely gone."""
    if not owner:
        return  # a lock file without a record: released, or its owner died while writing it
    who = _describe(owner)
    if owner.get("host") == socket.gethostname() and not _alive(owner):
        console.warning(f"{run_dir} was locked by {who}, which is gone (it did not stop cleanly, e.g. killed); taking the lock over.")
        return
    if break_lock:
        console.warning(f"--break-lock: taking over the lock of {run_dir} from {who}.")
        return
    if owner.get("host") == socket.gethostname():  # alive, yet the lock is free: a filesystem without flock
        where = "which still runs but does not hold the lock (this filesystem may not support locks)"
    else:
        where = f"and cannot be checked from this host ({socket.gethostname()}), e.g. on a shared filesystem"
    field = _dir_field(recipe)[0]
    raise TuneError(
        f"{run_dir} is locked by {who} {where}. If that run has stopped, run again with --break-lock; "
        f"otherwise wait for it, stop it, or give this run another {field}.",
        field=field,
    )


def busy_error(recipe: Recipe, run_dir: Path, owner: dict[str, Any]) -> TuneError:
    field = _dir_field(recipe)[0]
    if not owner:
        return TuneError(f"{run_dir} is in use by another run that is just starting. Wait for it, stop it, "
                         f"or give this run another {field}.", field=field)
    left_over = owner.get("host") == socket.gethostname() and not _alive(owner)
    holder = f" (pid {owner.get('pid')} is gone, but processes it started still hold the lock: stop them)" if left_over else ""
    return TuneError(f"{run_dir} is in use by {_describe(owner)}{holder}. Wait for it, stop it, "
                     f"or give this run another {field}.", field=field)


def unwritable_error(recipe: Recipe, run_dir: Path, e: OSError) -> TuneError:
    field, value = _dir_field(recipe)
    reason = e.strerror or str(e)
    blocker = _file_in_the_way(Path(os.path.abspath(run_dir)))
    if blocker is not None:
        reason += f": {blocker} is a file, not a directory"
    fix = ("set trainer.default_local_dir to a directory you can write" if field == "trainer.default_local_dir"
           else "run from a directory you can write, or set trainer.default_local_dir to one")
    if blocker is not None:
        fix = f"move the file {blocker} out of the way, or {fix}"
    elif e.errno == errno.ENOSPC:
        fix = f"free space on the disk that holds {os.path.abspath(run_dir)}, or {fix}"
    return field_error(field, value, f"the run directory {os.path.abspath(run_dir)} cannot be created or written ({reason})", fix + ".")


def _dir_field(recipe: Recipe) -> tuple[str, str]:
    """The recipe field that chose the run directory, and its value."""
    t = recipe.trainer
    if t.default_local_dir:
        return "trainer.default_local_dir", str(t.default_local_dir)
    return "trainer.experiment_name", t.experiment_name


def _file_in_the_way(path: Path) -> Path | None:
    """The part of ``path`` that exists but is not a directory (why mkdir says 'Not a directory')."""
    for part in [path, *path.parents]:
        if part.exists() or part.is_symlink():
            return None if part.is_dir() else part
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)


# ---------------------------------------------------------------------------------------------
# The owner's record
# ---------------------------------------------------------------------------------------------


def _write_owner(fd: int) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds"),
        "process_start": _process_start(os.getpid()),  # tells a reused pid from the owner
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    os.fsync(fd)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    command = " ".join(str(owner.get("command", "?")).split())  # one paragraph, whatever the command held
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since {owner.get('started', '?')} (command: {command})"


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the owner's process still runs on this host (a reused pid does not count)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    now = _process_start(pid)
    if now == "zombie":
        return False
    return now is None or owner.get("process_start") in (None, now)


def _process_start(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (Linux /proc); 'zombie' for a dead, unreaped one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, starttime 22
    return "zombie" if fields[0] in ("Z", "X") else fields[19]


# ---------------------------------------------------------------------------------------------
# Starting over
# ---------------------------------------------------------------------------------------------


def start_over(run_dir: Path, *, overwrite: bool) -> Path | None:
    """Clear ``run_dir`` for a fresh run, lock aside: into ``RUN_DIR.N`` (returned), or deleted with ``overwrite``."""
    run_dir = Path(run_dir)
    entries = sorted(p for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if not entries:
        return None
    if overwrite:
        try:
            for entry in entries:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        except OSError as e:
            raise TuneError(f"Starting over (--overwrite): could not delete {e.filename or entry} ({e.strerror or e}). "
                            f"Delete the old run in {run_dir} yourself, or start over without --overwrite.") from None
        _say(f"Starting over (--overwrite): deleted the old run in {run_dir}.")
        return None
    aside = _next_free_sibling(run_dir)
    try:
        for entry in entries:
            shutil.move(entry, aside / entry.name)
    except OSError as e:
        raise TuneError(
            f"Starting over (--no-resume): could not move {entry} to {aside} ({e.strerror or e}); entries moved so far "
            f"are in {aside}, the others still in {run_dir}. Move them yourself, or delete the old run with --overwrite."
        ) from None
    _say(f"Starting over (--no-resume): the old run was moved to {aside}.")
    return aside


def _say(text: str) -> None:
    console.out.print(text, markup=False, overflow="ignore", crop=False)  # a path is never folded in two


def _next_free_sibling(run_dir: Path) -> Path:
    base = Path(os.path.abspath(run_dir))
    for n in itertools.count(1):  # returns or raises
        aside = base.with_name(f"{base.name}.{n}")
        try:
            aside.mkdir()  # atomic: two runs starting over at once never share one
            return aside
        except FileExistsError:
            continue
        except OSError as e:
            raise TuneError(
                f"Starting over (--no-resume): cannot create {aside} to move the old run of {run_dir} into "
                f"({e.strerror or e}). Make {base.parent} writable, move the old run yourself, or delete it with --overwrite."
            ) from None
