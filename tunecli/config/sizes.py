"""Byte sizes that the memory estimate and the rollout engine must agree on."""

from __future__ import annotations

GiB = 2**30
# Bytes per element of each dtype name a recipe can hold ("auto" engines load bf16/fp16 checkpoints).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


def kv_cache_bytes_per_token(*, layers: int, kv_heads: int, head_dim: int, dtype: str) -> int:
    """K and V of every layer for one token of one sequence."""
    return 2 * layers * kv_heads * head_dim * DTYPE_BYTES[dtype]


def billions(size: str) -> float:
    """A parameter count written as '8B', '1.5b' or '500M', in billions (ValueError otherwise)."""
    text = size.strip().upper()
    scale = {"B": 1.0, "M": 1e-3}.get(text[-1:]) if text else None
    if scale is None:
        raise ValueError(f"{size!r} is not a size such as 8B or 500M")
    value = float(text[:-1]) * scale  # ValueError for '8xB'
    if not 0 < value < 10_000:
        raise ValueError(f"{size!r} is not a size between 1M and 10000B")
    return value
