"""The interactive half of `tune new`: questionary prompts that fill in ``Choices``.

It only asks; building, checking and writing are shared with the non-interactive path
(``defaults.build_recipe``, ``checks.check_recipe``, ``render``). Every prompt shows the value the
recipe would get anyway as its default, so pressing Enter through the wizard reproduces
``tune new --yes`` with the same flags.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from rich.markup import escape

from tunecli import console
from tunecli.catalog import load_catalog
from tunecli.errors import TuneError
from tunecli.authoring.defaults import TUNABLES, Choices, build_recipe
from tunecli.config.keys import field_info, get_path
from tunecli.config.schema import Recipe

SCRATCH = "(scratch)"
OTHER = "(other: type a path)"


class Cancelled(Exception):
    """The user pressed Ctrl-C or declined to write."""


def ask(question):
    answer = question.ask()
    if answer is None:
        raise Cancelled()
    return answer


def _field_help(dotted: str) -> str:
    info = field_info(Recipe, dotted)
    return (info.description or "") if info else ""


def _select(message: str, options: list[tuple[str, str]], default: str | None, instruction: str | None = None) -> str:
    import questionary

    # A None value is a heading (questionary.Separator), e.g. a model family.
    choices = [questionary.Separator(title) if value is None else questionary.Choice(title=title, value=value)
               for value, title in options]
    values = [v for v, _ in options if v is not None]
    return ask(questionary.select(message, choices=choices, default=default if default in values else None,
                                   instruction=instruction))


def _valid_name(text: str) -> bool | str:
    from tunecli.authoring.naming import NAME_RE

    return True if NAME_RE.match(text) else "letters, digits, '.', '_' and '-' only"


def _positive_int(text: str) -> bool | str:
    return True if text.strip().isdigit() and int(text) >= 1 else "a whole number >= 1"


def _described(entries) -> list[tuple[str, str]]:
    """(name, "name  description") menu options with the descriptions in one column."""
    width = max((len(e.name) for e in entries), default=0)
    return [(e.name, f"{e.name:<{width}}  {e.description}") for e in entries]


def model_menu(models) -> list[tuple[str | None, str]]:
    """The catalogue's models grouped by family: a heading (value None), then its models."""
    families = list(dict.fromkeys(m.family for m in models))
    menu: list[tuple[str | None, str]] = []
    for family in families:
        menu.append((None, f"-- {family or 'other'} --"))
        menu += [(m.name, f"{m.name:<20} {m.params_b:>6.2f}B  {m.description}") for m in models if m.family == family]
    return menu


def ask_ingredients(choices: Choices, current: Recipe) -> Choices:
    import questionary

    cat = load_catalog()
    c = copy.deepcopy(choices)
    entry = cat.model_by_path(current.model.path)
    picked = _select("Model", [*model_menu(cat.models), (OTHER, OTHER)], entry.name if entry else OTHER)
    if picked == OTHER:
        picked = ask(questionary.text("Model directory, cluster path or hub id", default="" if entry else current.model.path))
    c.model = picked
    c.algorithm = _select("Algorithm", _described(cat.algorithms), current.algorithm.name)
    c.method = _select("Method", _described(cat.methods), current.model.method)
    c.gpu_type = _select("Hardware", _described(cat.hardware), current.launch.hardware)
    unit = "CPU processes" if c.gpu_type == "cpu" else "GPUs"
    c.gpus = int(ask(questionary.text(f"{unit} per node", default=str(current.launch.n_gpus_per_node),
                                       validate=_positive_int)))
    c.nodes = int(ask(questionary.text("Nodes", default=str(current.launch.nnodes), validate=_positive_int)))
    c.engine = _select("Rollout engine", _described(cat.engines), current.rollout.name)
    datasets = _described([d for d in cat.datasets if d.name != "custom"])
    ds = _select("Dataset", [*datasets, (OTHER, "(your data: a .jsonl/.json/.csv/.parquet file, a folder or a hub dataset)")],
                 current.data.dataset if current.data.dataset != "custom" else OTHER)
    if ds == OTHER:
        ds = ask(questionary.text("Dataset file, folder or hub name", default=current.data.train_files or ""))
    c.dataset = ds
    entry_ds = cat.find("datasets", ds)
    default_reward = (entry_ds.default_reward if entry_ds else None) or current.reward.function
    rewards = _described([r for r in cat.rewards if r.name != "custom"])
    rw = _select("Reward", [*rewards, (OTHER, "(custom: path/to/file.py:function)")],
                 default_reward if ":" not in default_reward else OTHER)
    if rw == OTHER:
        rw = ask(questionary.text("Reward function (file.py:function)",
                                   default=default_reward if ":" in default_reward else ""))
    c.reward = rw
    return c


def _show_tunables(recipe: Recipe) -> None:
    rows = []
    data = recipe.model_dump(mode="json")
    for key in TUNABLES:
        if key.startswith("model.lora") and recipe.model.method != "lora":
            continue
        rows.append([key, escape(str(get_path(data, key)))])
    console.table(escape(f"Defaults for {recipe.model.path} on {recipe.launch.hardware}"), ["setting", "value"], rows)


def ask_tunables(choices: Choices, recipe: Recipe) -> Choices:
    """Offer to edit the size-dependent values; edits become --set overrides."""
    import questionary

    if not ask(questionary.confirm("Edit these values?", default=False)):
        return choices
    c = copy.deepcopy(choices)
    data = recipe.model_dump(mode="json")
    for key in TUNABLES:
        if key.startswith("model.lora") and recipe.model.method != "lora":
            continue
        old = str(get_path(data, key))
        new = ask(questionary.text(key, default=old, instruction=f"  {_field_help(key)}"))
        if new.strip() != old:
            c.sets = [*c.sets, f"{key}={new.strip()}"]
    return c


def run_wizard(choices: Choices, *, preview: Callable[[Recipe], bool], ask_start: bool = True) -> Choices:
    """Ask until the recipe passes its checks and the user confirms; return the final choices.

    ``preview(recipe)`` prints the summary and check results and returns True when the recipe is
    writable. Raises Cancelled when the user gives up.
    """
    import questionary

    cat = load_catalog()
    c = copy.deepcopy(choices)
    scratch = False
    if ask_start:  # (an imported verl script is already the starting point)
        presets = [(p.name, f"{p.name:<42} {p.description}") for p in cat.presets]
        start = _select("Start from", [(SCRATCH, "scratch: choose every ingredient"), *presets],
                        choices.preset or "quickstart")
        scratch = start == SCRATCH
        c.preset = None if scratch else start
    recipe, _ = build_recipe(c)
    if scratch or ask(questionary.confirm("Change the ingredients (model, hardware, dataset ...)?", default=False)):
        while True:
            picked = ask_ingredients(c, recipe)
            try:
                recipe, _ = build_recipe(picked)
                c = picked
                break
            except TuneError as e:  # e.g. a model directory without config.json: ask again
                console.error(str(e))
    while True:
        _show_tunables(recipe)
        c = ask_tunables(c, recipe)
        try:
            recipe, _ = build_recipe(c)
        except TuneError as e:  # a value the schema refuses: show it and offer the values again
            console.error(str(e))
            c.sets = list(choices.sets)
            continue
        name = ask(questionary.text("Recipe name", default=c.name or recipe.name, validate=_valid_name))
        c.name = None if name == recipe.name and not c.name else name
        recipe, _ = build_recipe(c)
        if preview(recipe):
            return c
        if not ask(questionary.confirm("Edit the values and try again?", default=True)):
            raise Cancelled()


def confirm_write(paths: tuple[Path, Path], existing: list[Path], *, force: bool) -> bool:
    """Ask before writing NAME.yaml and NAME.sh (defaulting to no when that overwrites files)."""
    import questionary

    if existing and not force:
        question, default = f"{' and '.join(map(str, existing))} exist(s). Overwrite?", False
    else:
        question, default = f"Write {paths[0]} and {paths[1].name}?", True
    return ask(questionary.confirm(question, default=default))
