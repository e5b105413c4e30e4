"""Dotted key paths (``actor.lr``) over recipe dicts: the one get / put / flatten, and schema lookups.

Leaves are whatever is not a section: ``reward.kwargs`` is a user dict and stays one leaf, so two
recipes that differ inside it differ in ``reward.kwargs`` as a whole.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

# Dict-valued fields that are values, not sections.
DICT_LEAVES = frozenset({"kwargs"})


def get_path(data: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """``data['a']['b']`` for ``'a.b'``, or ``default`` when any part is missing."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def put_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``'a.b'``, creating sections on the way."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'actor': {'lr': 1e-5}}`` -> ``{'actor.lr': 1e-5}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key not in DICT_LEAVES:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def changed_leaves(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted: (old, new)}`` for every leaf that differs between two recipe dicts."""
    a, b = flatten(before), flatten(after)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic section class of a field annotation, or None for a value field."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def field_info(root: type[BaseModel], dotted: str) -> FieldInfo | None:
    """The schema field a dotted key names (``actor.lr``), or None if there is none."""
    model: type[BaseModel] | None = root
    info = None
    for part in dotted.split("."):
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        model = section_model(info.annotation)
    return info
