"""The header line of a rendered NAME.sh, tying the script body and its NAME.yaml together.

    # tunecli-recipe: version=0.1.0 recipe-sha256=<64 hex> yaml=NAME.yaml

``recipe-sha256`` covers the script without its header line (the body) and the YAML's bytes, each
length-prefixed after a domain tag, so neither file can change, and no part can move from one file to
the other, without the hash changing. `tune new` writes it (``authoring.render`` via ``stamp``);
`tune run` and `tune validate` read it back (``launch.integrity``). Older tunecli versions wrote
``yaml-sha256=`` (the YAML alone): such a header is recognised (``ScriptHeader.current`` is False)
but never trusted.

The hash is no signature: anyone can compute it. What it buys is that an edit to either file, or a
header copied onto another script, is noticed; `tune run` also compares the body with what tunecli
renders for the YAML, so a recomputed hash on an edited body is refused as well.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from tunecli import __version__

HEADER_PREFIX = "# tunecli-recipe:"
_DOMAIN = b"tunecli recipe-sha256 v1\0"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# The header sits among the first lines (after the shebang and, for slurm, nothing else).
_HEADER_SEARCH_LINES = 5


def recipe_sha256(body: bytes, yaml_bytes: bytes) -> str:
    """The header's hash: the script body and the YAML bytes, each with its length, after a domain tag."""
    digest = hashlib.sha256(_DOMAIN)
    for part in (body, yaml_bytes):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def header_line(recipe_hash: str, yaml_name: str, version: str = __version__) -> str:
    return f"{HEADER_PREFIX} version={version} recipe-sha256={recipe_hash} yaml={yaml_name}"


@dataclass(frozen=True)
class ScriptHeader:
    version: str
    yaml: str  # the YAML's file name, next to the script
    recipe_sha256: str | None  # None for an older tunecli's header (it hashed the YAML alone)
    index: int  # the header's line number in the script, from 0

    @property
    def current(self) -> bool:
        return self.recipe_sha256 is not None


def parse_header_line(line: str, index: int = 0) -> ScriptHeader | None:
    """The header's fields, or None when the line is not a well-formed tunecli header (of any version)."""
    if not line.startswith(HEADER_PREFIX):
        return None
    fields = dict(kv.split("=", 1) for kv in line[len(HEADER_PREFIX):].split() if "=" in kv)
    version, yaml_name = fields.get("version"), fields.get("yaml")
    if not version or not yaml_name or "/" in yaml_name:
        return None
    if _HEX64.fullmatch(fields.get("recipe-sha256", "")):
        return ScriptHeader(version, yaml_name, fields["recipe-sha256"], index)
    if _HEX64.fullmatch(fields.get("yaml-sha256", "")):
        return ScriptHeader(version, yaml_name, None, index)
    return None


def split_script(data: bytes) -> tuple[ScriptHeader | None, bytes]:
    """(header, body): the body is the script without its header line; (None, data) without a header."""
    lines = data.splitlines(keepends=True)
    for i, raw in enumerate(lines[:_HEADER_SEARCH_LINES]):
        if raw.startswith(HEADER_PREFIX.encode()):
            header = parse_header_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"), i)
            if header is not None:
                return header, b"".join(lines[:i] + lines[i + 1:])
    return None, data


def read_script_header(path: str | Path) -> ScriptHeader | None:
    """The header of a rendered NAME.sh (current or older format), or None if it has none."""
    try:
        with open(path, "rb") as f:
            head = b"".join(f.readline() for _ in range(_HEADER_SEARCH_LINES))
    except OSError:
        return None
    return split_script(head)[0]


def stamp(script_text: str, yaml_bytes: bytes, yaml_name: str) -> str:
    """The script with its header line (the first line starting with the prefix) set to the hash of its
    body and ``yaml_bytes``: `tune new` renders a bare prefix there, `--fix-hash` a current header."""
    lines = script_text.encode("utf-8").splitlines(keepends=True)  # bytes: the lines split_script sees
    for i, line in enumerate(lines[:_HEADER_SEARCH_LINES]):
        if line.startswith(HEADER_PREFIX.encode()):
            body = b"".join(lines[:i] + lines[i + 1:])
            lines[i] = header_line(recipe_sha256(body, yaml_bytes), yaml_name).encode("utf-8") + b"\n"
            return b"".join(lines).decode("utf-8")
    raise ValueError(f"the script has no '{HEADER_PREFIX}' line among its first {_HEADER_SEARCH_LINES} lines")
