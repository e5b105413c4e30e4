"""The catalogue: one YAML file per menu in ``data/``, loaded and validated with pydantic; the
algorithms and rewards menus come from their registries (``tunecli.algorithms``, ``tunecli.rewards``).

``tune list``, ``tune new`` and the checks all look names up here; a model name that is not in
the catalogue is treated as a path or hub id (its shape read from its config.json).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunecli.algorithms import algorithm_names, get_algorithm
from tunecli.catalog.hub import find_config
from tunecli.errors import TuneError, did_you_mean
from tunecli.rewards import reward_menu

DATA_DIR = Path(__file__).resolve().parent / "data"


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str = ""


class ModelEntry(Entry):
    """A model's shape: everything the memory estimate needs."""

    hf_id: str | None = None
    family: str = Field("", description="Model family the wizard groups by (Qwen3, Llama 3, Gemma ...).")
    aliases: list[str] = Field(default_factory=list, description="Other names for the same checkpoint.")
    embedded: bool = False
    params_b: float = Field(description="Published parameter count in billions.")
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    max_position: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    head_dim: int | None = None

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def params(self) -> int:
        return int(round(self.params_b * 1e9))

    def param_count_from_shape(self) -> int:
        """Parameters implied by the shape (a Llama/Qwen2 decoder); tests compare it with params_b."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_size
        q = self.heads * self.head_size
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        per_layer = attn + 3 * h * i + 2 * h
        embed = self.vocab * h * (1 if self.tie_embeddings else 2)
        return embed + self.layers * per_layer + h

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> ModelEntry:
        """Shape of a custom model from its HF config.json (text models; vision configs nest it)."""
        cfg = config.get("text_config", config)
        try:
            heads = int(cfg["num_attention_heads"])
            entry = cls(
                name=name,
                description="custom model (shape from config.json)",
                params_b=0.0,
                layers=int(cfg["num_hidden_layers"]),
                hidden=int(cfg["hidden_size"]),
                intermediate=int(cfg.get("intermediate_size") or 4 * int(cfg["hidden_size"])),
                heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                vocab=int(cfg["vocab_size"]),
                max_position=int(cfg.get("max_position_embeddings") or 4096),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") in ("qwen2",))),
                head_dim=cfg.get("head_dim"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise TuneError(
                f"model.path '{name}': its config.json lacks {e} needed to size the model. Use a "
                "decoder-only HF checkpoint (config.json with num_hidden_layers, hidden_size, ...).",
                field="model.path",
            ) from None
        return entry.model_copy(update={"params_b": entry.param_count_from_shape() / 1e9})


class HardwareEntry(Entry):
    kind: Literal["cpu", "gpu"]
    memory_gib: float | None = Field(None, description="Per device; null = this machine's RAM.")
    bf16: bool

    def memory_bytes(self) -> int:
        if self.memory_gib is not None:
            return int(self.memory_gib * 2**30)
        return system_ram_bytes()


class AlgorithmEntry(Entry):
    settings: dict[str, Any]


class MethodEntry(Entry):
    settings: dict[str, Any]


class EngineEntry(Entry):
    module: str | None = None
    install: dict[str, str] = Field(default_factory=dict)


class StrategyEntry(Entry):
    name_in_recipe: str


class DatasetEntry(Entry):
    kind: Literal["generated", "file"]
    default_reward: str | None = None
    train_files: str | None = None
    val_files: str | None = None


class RewardEntry(Entry):
    pass


class PresetEntry(Entry):
    verl_script: str | None = None
    recipe: dict[str, Any] = Field(description="Nested partial recipe (after `extends` is merged).")

    @property
    def hardware(self) -> str:
        return self.recipe.get("launch", {}).get("hardware", "cpu")

    @property
    def gpus(self) -> int:
        launch = self.recipe.get("launch", {})
        return launch.get("nnodes", 1) * launch.get("n_gpus_per_node", 1)


def system_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small laptop
        return 16 * 2**30


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read(name: str) -> Any:
    path = DATA_DIR / f"{name}.yaml"
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _resolve_bases(bases: dict[str, dict[str, Any]], name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in seen:
        raise ValueError(f"presets.yaml: base '{name}' extends itself")
    if name not in bases:
        raise ValueError(f"presets.yaml: unknown base '{name}'{did_you_mean(name, bases)}")
    block = dict(bases[name])
    parent = block.pop("extends", None)
    return deep_merge(_resolve_bases(bases, parent, (*seen, name)), block) if parent else block


def _algorithm_menu() -> list[AlgorithmEntry]:
    specs = [get_algorithm(name) for name in algorithm_names()]
    return [AlgorithmEntry(name=s.name, description=s.description, settings=dict(s.defaults)) for s in specs]


def _load_presets() -> list[PresetEntry]:
    raw = _read("presets")
    bases = raw.get("bases", {})
    out = []
    for item in raw["presets"]:
        item = dict(item)
        parent = item.pop("extends", None)
        recipe = item.pop("recipe", {}) or {}
        if parent:
            recipe = deep_merge(_resolve_bases(bases, parent), recipe)
        out.append(PresetEntry(recipe=recipe, **item))
    return out


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)
    models: list[ModelEntry]
    algorithms: list[AlgorithmEntry]
    methods: list[MethodEntry]
    hardware: list[HardwareEntry]
    engines: list[EngineEntry]
    strategies: list[StrategyEntry]
    datasets: list[DatasetEntry]
    rewards: list[RewardEntry]
    presets: list[PresetEntry]

    MENUS: ClassVar[tuple[str, ...]] = (
        "presets", "models", "algorithms", "methods", "hardware", "engines", "strategies", "datasets", "rewards",
    )

    def menu(self, menu: str) -> list[Entry]:
        return list(getattr(self, menu))

    def names(self, menu: str) -> list[str]:
        return [e.name for e in self.menu(menu)]

    def find(self, menu: str, name: str) -> Entry | None:
        for e in self.menu(menu):
            if e.name == name:
                return e
        return None

    def get(self, menu: str, name: str, *, field: str) -> Any:
        """The entry called ``name``, or a TuneError listing the choices."""
        entry = self.find(menu, name)
        if entry is None:
            choices = self.names(menu)
            raise TuneError(
                f"{field} '{name}' is not in the {menu} catalogue{did_you_mean(name, choices)}. "
                f"Choose one of: {', '.join(choices)} (see `tune list {menu}`).",
                field=field,
            )
        return entry

    def preset(self, name: str) -> PresetEntry:
        for p in self.presets:
            if name in (p.name, p.verl_script, (p.verl_script or "").removesuffix(".sh")):
                return p
        return self.get("presets", name, field="--preset")

    def model_by_path(self, path: str) -> ModelEntry | None:
        """Catalogue entry for a model.path given as catalogue name or hub id (case-insensitive)."""
        low = path.lower().rstrip("/")
        for m in self.models:
            if low in (m.name, (m.hf_id or "").lower()):
                return m
        return None

    def model_by_basename(self, path: str) -> ModelEntry | None:
        """Catalogue entry whose hub id or alias ends like ``path`` (a local copy such as ~/models/Qwen2.5-7B-Instruct)."""
        base = path.rstrip("/").rsplit("/", 1)[-1].lower()
        for m in self.models:
            names = [(m.hf_id or "").rsplit("/", 1)[-1], *m.aliases]
            if base in (n.lower() for n in names if n):
                return m
        return None


@functools.lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    try:
        return Catalog(
            models=_read("models"),
            algorithms=_algorithm_menu(),
            methods=_read("methods"),
            hardware=_read("hardware"),
            engines=_read("engines"),
            strategies=_read("strategies"),
            datasets=_read("datasets"),
            rewards=[RewardEntry(name=n, description=d) for n, d in reward_menu()],
            presets=_load_presets(),
        )
    except (ValidationError, ValueError, OSError) as e:  # a packaging bug, not a user error
        raise RuntimeError(f"tunecli catalogue data is invalid: {e}") from e


def model_shape(path: str, revision: str | None = None) -> ModelEntry:
    """Shape of ``model.path``, or a TuneError saying why it cannot be known here."""
    entry, reason = lookup_shape(path, revision)
    if entry is None:
        raise TuneError(f"model.path '{path}': its shape is unknown here ({reason}).", field="model.path")
    return entry


def lookup_shape(path: str, revision: str | None = None) -> tuple[ModelEntry | None, str]:
    """(shape, '') from the catalogue, a local directory, the HF cache or the Hub's config.json; or
    (None, why) when none of them answers here (offline, or a path that exists only on a cluster).

    A plain name close to a catalogue name is a typo and refused with 'did you mean'.
    """
    cat = load_catalog()
    entry = cat.model_by_path(path)
    if entry is not None:
        return entry, ""
    local = Path(path).expanduser()
    if local.exists():
        cfg = local / "config.json"
        if not cfg.is_file():
            raise TuneError(f"model.path '{path}' is {'a directory without config.json' if local.is_dir() else 'a file'}, "
                            "not a Hugging Face model directory. Give the folder that holds config.json and the "
                            "weights, a hub id, or a catalogue model (tune list models).", field="model.path")
        return _shape_from_file(path, cfg), ""
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        return None, "not a directory on this machine; a path on the cluster is fine"
    names = [*cat.names("models"), *(m.hf_id for m in cat.models if m.hf_id)]
    hint = did_you_mean(path, names)
    if "/" not in path and hint:
        raise TuneError(f"model.path '{path}' is not a catalogue model{hint}. Use one of {', '.join(cat.names('models'))} "
                        "(tune list models), a local HF model directory, or a hub id such as Qwen/Qwen3-1.7B.",
                        field="model.path")
    found = find_config(path, revision)
    if found.path is None:
        return None, found.reason + hint
    return _shape_from_file(path, found.path), ""


def _shape_from_file(path: str, cfg: Path) -> ModelEntry:
    try:
        config = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TuneError(f"model.path '{path}': cannot read {cfg} ({e}). Fix or download it again "
                        f"(hf download {path} config.json).", field="model.path") from None
    return ModelEntry.from_config(path, config)


def shape_for_size(billions: float) -> ModelEntry:
    """A stand-in shape for a model known only by its size: the catalogue model nearest in size,
    with the given parameter count (the memory estimate's weights and optimizer scale with it)."""
    models = [m for m in load_catalog().models if not m.embedded]
    near = min(models, key=lambda m: abs(m.params_b - billions))
    return near.model_copy(update={"name": f"{billions:g}B", "description": f"the layer shape of {near.name}",
                                   "params_b": billions})
