"""The header line of a rendered NAME.sh, tying the script to the exact bytes of its NAME.yaml.

    # tunecli-recipe: version=0.1.0 yaml-sha256=<64 hex> yaml=NAME.yaml

`tune new` writes it (``authoring.render``); `tune run` and `tune validate` read it back
(``launch.plan``) and compare the hash with ``yaml_hash`` to notice a YAML edited after rendering.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tunecli import __version__

HEADER_PREFIX = "# tunecli-recipe:"
_HEADER_RE = re.compile(
    r"^# tunecli-recipe: version=(?P<version>\S+) yaml-sha256=(?P<yaml_sha256>[0-9a-f]{64})(?: yaml=(?P<yaml>\S+))?\s*$"
)
# The header sits among the first lines (after the shebang and, for slurm, nothing else).
_HEADER_SEARCH_LINES = 5


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def yaml_hash(path: str | Path) -> str:
    """sha256 (hex) of the YAML file's bytes, as written in the script header."""
    return sha256_bytes(Path(path).read_bytes())


def header_line(yaml_sha256: str, yaml_name: str, version: str = __version__) -> str:
    return f"{HEADER_PREFIX} version={version} yaml-sha256={yaml_sha256} yaml={yaml_name}"


def parse_header_line(line: str) -> dict[str, str] | None:
    m = _HEADER_RE.match(line.rstrip("\n"))
    if not m:
        return None
    return {k: v for k, v in m.groupdict().items() if v is not None}


def read_script_header(path: str | Path) -> dict[str, str] | None:
    """{'version', 'yaml_sha256', 'yaml'} from a rendered NAME.sh, or None if it has no header."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for _ in range(_HEADER_SEARCH_LINES):
                line = f.readline()
                if not line:
                    break
                parsed = parse_header_line(line)
                if parsed:
                    return parsed
    except OSError:
        return None
    return None


def replace_header_hash(script_text: str, yaml_sha256: str) -> str:
    """The script text with its header's hash (and version) replaced; used by `tune validate --fix-hash`."""
    lines = script_text.splitlines(keepends=True)
    for i, line in enumerate(lines[:_HEADER_SEARCH_LINES]):
        parsed = parse_header_line(line)
        if parsed:
            lines[i] = header_line(yaml_sha256, parsed.get("yaml", "")).rstrip() + "\n"
            return "".join(lines)
    raise ValueError("script has no tunecli-recipe header")
