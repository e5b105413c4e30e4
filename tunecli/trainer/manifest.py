"""A checkpoint's manifest and its durable commit (plain filesystem code, no torch).

``manifest.json`` lists every file of a checkpoint with its size and sha256. It is written last, so
its presence marks a finished checkpoint (``config.paths.complete_checkpoints``), and ``verify``
finds a checkpoint that was truncated, lost a file or changed since. Every file and directory is
fsync'ed before the rename that commits the checkpoint, and the parent directory after it: a crash
or power loss leaves the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tunecli.config.paths import MANIFEST

# What a checkpoint cannot load without, whatever its manifest lists.
REQUIRED_FILES = ("config.yaml", "trainer_state.pt", "model_optim/.metadata")
_HASH_THREADS = 8  # hashlib releases the GIL: a sharded checkpoint hashes its files in parallel


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path, *, sync: bool = False) -> str:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        if sync:  # flushes the writer's data too: fsync acts on the file, not on this descriptor
            os.fsync(f.fileno())
    return digest


def write_manifest(root: Path) -> dict[str, dict[str, int | str]]:
    """fsync every file under ``root`` while hashing it, then write the manifest and fsync the directories."""
    names = _files(root)
    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, max(1, len(names)))) as pool:
        digests = list(pool.map(lambda name: _sha256(root / name, sync=True), names))
    entries = {name: {"size": (root / name).stat().st_size, "sha256": d} for name, d in zip(names, digests, strict=True)}
    with (root / MANIFEST).open("w") as f:
        json.dump({"files": entries}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for directory in sorted({(root / name).parent for name in names} | {root}, reverse=True):
        fsync_dir(directory)
    return entries


def commit(tmp: Path, final: Path) -> None:
    """The commit point: rename the finished temporary directory, then make the rename durable."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def verify(root: Path) -> str | None:
    """What is wrong with the checkpoint ``root`` (one clause), or None when every file matches its manifest."""
    try:
        entries = json.loads((root / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST} (it was not finished, or an older tunecli wrote it)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its {MANIFEST} is unreadable ({e})"
    for name in REQUIRED_FILES:
        if name not in entries:
            return f"{name} is missing"
    for name, entry in entries.items():  # sizes first: cheap, and they catch a truncated file
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} is {size} bytes, the manifest says {entry['size']} (truncated or overwritten)"
    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, max(1, len(entries)))) as pool:
        digests = dict(zip(entries, pool.map(lambda name: _sha256(root / name), entries), strict=True))
    for name, entry in entries.items():
        if digests[name] != entry["sha256"]:
            return f"{name} changed after it was written (its sha256 differs from the manifest's)"
    return None


def size_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
