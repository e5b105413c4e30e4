"""Reading recipes: YAML file + dotted overrides -> validated ``Recipe``, or a one-paragraph TuneError."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunecli.errors import TuneError, did_you_mean
from tunecli.config.keys import field_info, section_model
from tunecli.config.schema import Recipe, allowed_range


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it: 3 -> int, 1e-5 -> float, true -> bool, [a,b] -> list."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads '1e-5' as a string; users mean a float.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") and value[0] in "+-.0123456789" else value
        except ValueError:
            return value
    return value


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a recipe dict; unknown keys fail with a 'did you mean'."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise TuneError(
                f"Override '{item}' is not of the form key=value. Write it as section.key=value, "
                "for example actor.lr=1e-5 or rollout.n=8.",
                field=item,
            )
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("+")
        parts = key.split(".")
        model: type[BaseModel] = Recipe
        node = data
        for i, part in enumerate(parts):
            fields = model.model_fields
            if part not in fields:
                where = ".".join(parts[:i]) or "the recipe"
                raise TuneError(
                    f"Unknown config key '{key}': {where} has no field '{part}'"
                    f"{did_you_mean(part, fields)}. Run `tune list` or look at a rendered NAME.yaml "
                    "for the valid keys.",
                    field=key,
                )
            section = section_model(fields[part].annotation)
            if i == len(parts) - 1:
                node[part] = parse_value(raw)
            else:
                if section is None:
                    raise TuneError(
                        f"Config key '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section, "
                        "so it has no sub-keys. Drop the part after it.",
                        field=key,
                    )
                node = node.setdefault(part, {})
                model = section
    return data


def format_validation_error(err: ValidationError, source: str = "recipe") -> TuneError:
    """Turn pydantic's error list into one readable paragraph (field, value, fix)."""
    lines = []
    first_field = None
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        first_field = first_field or loc
        if e["type"] == "extra_forbidden":
            section = _section_for(e["loc"][:-1])
            hint = did_you_mean(str(e["loc"][-1]), _known_keys(section)) if section else ""
            lines.append(f"'{loc}' is not a known config key{hint}")
        else:
            value = e.get("input")
            shown = value if not isinstance(value, (dict, list)) else type(value).__name__
            info = field_info(Recipe, loc)
            allowed = allowed_range(info) if info is not None and e["type"] != "value_error" else None
            hint = f"; use a number {allowed}" if allowed else ""
            lines.append(f"'{loc}' = {shown!r}: {e['msg'].removeprefix('Value error, ').rstrip('.')}{hint}")
    return TuneError(
        f"Invalid {source}: " + "; ".join(lines) + ". Fix the value in the YAML or with --set section.key=value.",
        field=first_field,
    )


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Recipe
    for part in loc:
        field = model.model_fields.get(str(part)) if model is not None else None
        model = section_model(field.annotation) if field is not None else None
    return model


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None, source: str = "recipe") -> Recipe:
    data = apply_overrides(data, overrides or [])
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, source) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load NAME.yaml (or the YAML next to NAME.sh) and apply overrides."""
    path = Path(path)
    if path.suffix == ".sh":
        path = path.with_suffix(".yaml")
    if not path.is_file():
        raise TuneError(
            f"Recipe file '{path}' does not exist. Create one with `tune new`, or pass the path of an "
            "existing NAME.yaml.",
            field="config",
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise TuneError(f"Recipe file '{path}' is not valid YAML ({err}). Fix the syntax or re-render it with `tune new`.") from None
    if not isinstance(data, dict):
        raise TuneError(f"Recipe file '{path}' must hold a mapping of sections (model:, data:, ...), not {type(data).__name__}.")
    return recipe_from_dict(data, overrides, source=str(path))


def dump_recipe(recipe: Recipe) -> dict[str, Any]:
    """Plain dict of every field (for YAML, checkpoints and config comparisons)."""
    return recipe.model_dump(mode="json")
