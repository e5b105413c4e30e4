"""``${NAME}`` references in recipe values: filled from the environment where the run starts.

An imported verl script may take paths from its environment (``$CKPT_DIR``, ``$RAY_DATA_HOME``); the
recipe keeps them as ``${NAME}`` so it runs wherever those are set. They are resolved when a recipe
file is loaded for a run, and an unset one stops the run before anything loads, naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from tunecli.errors import TuneError

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def env_names(data: Any) -> set[str]:
    """Every NAME referenced as ``${NAME}`` in the string values of ``data``."""
    if isinstance(data, dict):
        return {n for v in data.values() for n in env_names(v)}
    if isinstance(data, list):
        return {n for v in data for n in env_names(v)}
    return set(ENV_REF.findall(data)) if isinstance(data, str) else set()


def resolve_env_refs(data: Any, environ: Mapping[str, str] | None = None, where: str = "") -> Any:
    """A copy of ``data`` with each ``${NAME}`` replaced by its environment value; unset: TuneError."""
    environ = os.environ if environ is None else environ
    if isinstance(data, dict):
        return {k: resolve_env_refs(v, environ, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_env_refs(v, environ, where) for v in data]
    if not isinstance(data, str) or "${" not in data:
        return data

    def value(m: re.Match) -> str:
        name = m.group(1)
        if name not in environ:
            raise TuneError(f"{where} = {data!r} needs the environment variable {name}, which is not set. Set it "
                            f"where the run starts (export {name}=...), or write the value into the recipe.",
                            field=where)
        return environ[name]

    return ENV_REF.sub(value, data)
