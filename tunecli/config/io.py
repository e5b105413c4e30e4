"""Reading recipes: YAML file + dotted overrides -> validated ``Recipe``, or a one-paragraph TuneError."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunecli.errors import TuneError, did_you_mean
from tunecli.config.envrefs import resolve_env_refs
from tunecli.config.keys import field_info, section_model
from tunecli.config.schema import Recipe, allowed_range
from tunecli.config.verl_keys import Mapped, Unmapped, combine_algorithms, is_verl_key, map_verl_override


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


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise TuneError(
            f"Override '{item}' is not of the form key=value. Write it as section.key=value, "
            "for example actor.lr=1e-5 or rollout.n=8.",
            field=item,
        )
    key, raw = item.split("=", 1)
    return key.strip().lstrip("+~"), raw


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    """Set one recipe key; an unknown key fails with a 'did you mean'."""
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
            node[part] = value
        else:
            if section is None:
                raise TuneError(
                    f"Config key '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section, "
                    "so it has no sub-keys. Drop the part after it.",
                    field=key,
                )
            node = node.setdefault(part, {})
            model = section


def _put_verl(data: dict[str, Any], mapped: Mapped, algorithm: list[str]) -> None:
    """A verl key's tunecli meaning; two keys naming the algorithm are combined (grpo + gspo loss)."""
    for target, value in mapped.sets.items():
        if target == "algorithm.name":
            value = combine_algorithms(algorithm[-1] if algorithm else None, value)
            algorithm.append(value)
        _put(data, target, parse_value(value) if isinstance(value, str) else value)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a recipe dict; unknown keys fail with a 'did you mean'.

    verl's keys (``actor_rollout_ref.rollout.n=8``) are read through the one key table
    (``verl_keys``); a verl key with no tunecli meaning is refused with the reason, all of them listed.
    """
    data = copy.deepcopy(data)
    unmapped: list[Unmapped] = []
    algorithm: list[str] = []
    for item in overrides:
        key, raw = _split_override(item)
        if field_info(Recipe, key) is not None or not is_verl_key(key):
            _put(data, key, parse_value(raw))
            continue
        mapped = map_verl_override(key, raw)
        if isinstance(mapped, Unmapped):
            unmapped.append(mapped)
        else:
            _put_verl(data, mapped, algorithm)
    if unmapped:
        listed = "; ".join(f"{u.key}={u.value} ({u.reason})" for u in unmapped)
        raise TuneError(f"{len(unmapped)} verl override(s) have no meaning in a tunecli recipe and were not applied: "
                        f"{listed}. Drop them, or set the tunecli field named in the reason.", field=unmapped[0].key)
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


@dataclass(frozen=True)
class RecipeFile:
    """A recipe file's bytes, read once: what is hashed is what is parsed."""

    path: Path
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def mapping(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.data)
        except yaml.YAMLError as err:
            raise TuneError(f"Recipe file '{self.path}' is not valid YAML ({err}). Fix the syntax or re-render it "
                            "with `tune new`.", field="config") from None
        if data is not None and not isinstance(data, dict):
            raise TuneError(f"Recipe file '{self.path}' must hold a mapping of sections (model:, data:, ...), "
                            f"not {type(data).__name__}.", field="config")
        return data or {}

    def recipe(self, overrides: list[str] | None = None) -> Recipe:
        """The recipe as it runs here: overrides applied, ``${NAME}`` values filled from the environment."""
        return recipe_from_dict(resolve_env_refs(self.mapping()), overrides, source=str(self.path))

    def empty_warning(self) -> str | None:
        """The warning for a file that sets nothing (empty, or comments only): every field is a default."""
        try:
            empty = not self.mapping()
        except TuneError:
            return None  # the parse error is reported where the recipe is loaded
        if not empty:
            return None
        r = Recipe()
        return (f"{self.path.name} is empty: every field takes its default (name {r.name}, model {r.model.path}, "
                f"dataset {r.data.dataset}, {r.launch.world_size} {r.launch.hardware} process). If that is not what "
                "you meant, check the path, or write a recipe with `tune new`.")


def read_recipe_file(path: str | Path, *, expect_sha256: str | None = None) -> RecipeFile:
    """NAME.yaml (or the YAML next to NAME.sh), read once; with ``expect_sha256``, refused unless its bytes
    are the ones `tune run` checked, before anything else (a reward import, a model load) happens."""
    path = Path(path)
    if path.suffix == ".sh":
        path = path.with_suffix(".yaml")
    try:
        file = RecipeFile(path, path.read_bytes())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise TuneError(
            f"Recipe file '{path}' does not exist. Create one with `tune new`, or pass the path of an "
            "existing NAME.yaml.",
            field="config",
        ) from None
    except OSError as err:
        raise TuneError(f"Recipe file '{path}' cannot be read ({err.strerror}). Check its permissions.", field="config") from None
    if expect_sha256 is not None and file.sha256 != expect_sha256.lower():
        raise TuneError(
            f"Refusing to train: {path} is not the file `tune run` checked (its sha256 is {file.sha256[:12]}… now, "
            f"{expect_sha256[:12]}… when it was checked): it changed between the check and the trainer's start. "
            "Nothing was loaded. Look at what changed, then start the run again with `tune run`, which checks "
            "the file as it is now.",
            field="config-sha256",
        )
    return file


def load_recipe(path: str | Path, overrides: list[str] | None = None, *, expect_sha256: str | None = None) -> Recipe:
    """Load NAME.yaml (or the YAML next to NAME.sh) and apply overrides (see ``read_recipe_file``)."""
    return read_recipe_file(path, expect_sha256=expect_sha256).recipe(overrides)


def dump_recipe(recipe: Recipe) -> dict[str, Any]:
    """Plain dict of every field (for YAML, checkpoints and config comparisons)."""
    return recipe.model_dump(mode="json")
