"""`tune new` without its terminal: flags, an answers file and imported choices become one set of
``Choices``; the recipe is built, checked, rendered and written (both files, or neither).

The layers decide who calls what: importers sit above authoring, so the caller imports a verl
script and passes its choices in as the base that the answers file and the flags override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from tunecli.authoring.checks import Report, check_recipe
from tunecli.authoring.defaults import Choices, build_recipe
from tunecli.authoring.render import Rendered, render, write_files, yaml_value
from tunecli.catalog import PresetEntry
from tunecli.config.schema import LaunchConfig, Recipe
from tunecli.errors import TuneError, did_you_mean, field_error

DEFAULT_OUT = Path("generated")
LAUNCHERS = get_args(LaunchConfig.model_fields["launcher"].annotation)  # the schema's choices


@dataclass
class NewRequest:
    """What `tune new` was asked for: the ingredient flags (as Choices) and where and how to write."""

    flags: Choices = field(default_factory=Choices)
    out: Path | None = None  # None: the answers file's out, else DEFAULT_OUT
    answers: Path | None = None
    from_verl: Path | None = None
    env: list[str] = field(default_factory=list)  # --env NAME=VALUE for the imported script
    interactive: bool = True
    dry_run: bool = False
    force: bool = False


@dataclass
class Checked:
    """A built recipe with its check report (not yet rendered)."""

    recipe: Recipe
    preset: PresetEntry | None
    report: Report


def refuse_bad_request(request: NewRequest, *, has_terminal: bool) -> None:
    """Refuse what no answer could fix: questions without a terminal, an unknown launcher."""
    if request.interactive and not has_terminal:
        raise TuneError(
            "tune new needs a terminal for its questions, and this one has none (stdin or stdout is not a TTY). "
            "Pass --yes to use the flags and defaults without prompts, e.g. tune new --preset quickstart --yes.",
            field="--yes",
        )
    launcher = request.flags.launcher
    if launcher not in (None, *LAUNCHERS):
        raise TuneError(f"--launcher '{launcher}' is not a launcher. Use local (torchrun) or slurm (sbatch).",
                        field="--launcher")
    if request.env and request.from_verl is None:
        raise TuneError("--env gives values to the variables of an imported script, and no --from-verl script is given. "
                        "Add --from-verl SCRIPT.sh, or use --set section.key=value.", field="--env")


def _read_answers(path: Path) -> dict[Any, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise TuneError(f"--answers '{path}' cannot be read ({e.strerror}). Give the path of a YAML file.",
                        field="--answers") from None
    except yaml.YAMLError as e:
        raise TuneError(f"--answers '{path}' is not valid YAML ({e}). Fix the syntax.", field="--answers") from None
    if not isinstance(data, dict):
        raise TuneError(f"--answers '{path}' must be a mapping such as 'preset: quickstart', not a "
                        f"{type(data).__name__}.", field="--answers")
    return data


def _answer_sets(path: Path, value: Any) -> list[str]:
    """`set:` as a mapping {key: value}, one 'key=value' string, or a list of them."""
    if isinstance(value, dict):
        return [f"{k}={v if isinstance(v, str) else yaml_value(v)}" for k, v in value.items()]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise field_error("--answers", str(path), f"its set: {value!r} is neither a mapping nor a list of KEY=VALUE",
                      "write e.g. 'set: {actor.lr: 2e-5}'")


def _answer_out(path: Path, value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise field_error("--answers", str(path), f"its out: {value!r} is not a folder path",
                          "write e.g. 'out: generated' (quote a name that YAML reads as a number)")
    return Path(value)


def load_answers(path: Path) -> tuple[Choices, Path | None]:
    """An answers file (YAML: the flags' names as keys, plus set and out) as Choices and its out."""
    keys = [k for k in Choices.keys() if k != "sets"] + ["set", "out"]
    answers: dict[str, Any] = {}
    out = None
    for key, value in _read_answers(path).items():
        k = str(key).replace("-", "_")
        if k not in keys:
            raise TuneError(f"--answers '{path}': unknown key '{key}'{did_you_mean(k, keys)}. "
                            f"Valid keys: {', '.join(keys)}.", field="--answers")
        if k == "out":
            out = _answer_out(path, value)
        elif k == "set":
            answers["sets"] = _answer_sets(path, value)
        else:
            answers[k] = value
    return Choices(**answers), out


def resolve_choices(request: NewRequest, imported: Choices | None = None) -> tuple[Choices, Path]:
    """Flags over the answers file over the imported choices; and the folder to write to (--out,
    else the answers file's out, else the default)."""
    base, answers_out = imported or Choices(), None
    if request.answers is not None:
        answers, answers_out = load_answers(request.answers)
        base = answers.merged_over(base)
    return request.flags.merged_over(base), request.out or answers_out or DEFAULT_OUT


def build_checked(choices: Choices) -> Checked:
    recipe, preset = build_recipe(choices)
    return Checked(recipe, preset, check_recipe(recipe))


def render_checked(checked: Checked, out: Path) -> Rendered:
    """Both files in memory; refused when a check failed (the caller has shown the report)."""
    errors = checked.report.errors
    if errors:
        raise TuneError(f"{len(errors)} check(s) failed (above); nothing was written.", field=errors[0].field)
    return render(checked.recipe, out_dir=out, preset=checked.preset.name if checked.preset else None)


def recipe_paths(rendered: Rendered, out: Path) -> tuple[Path, Path]:
    """Where NAME.yaml and NAME.sh go."""
    return out / f"{rendered.name}.yaml", out / f"{rendered.name}.sh"


def existing_paths(rendered: Rendered, out: Path) -> list[Path]:
    return [p for p in recipe_paths(rendered, out) if p.exists()]


def write_recipe(rendered: Rendered, out: Path, *, overwrite: bool) -> tuple[Path, Path]:
    """Write both files (temp file + rename: never half of them); refuses to overwrite unless asked."""
    existing = existing_paths(rendered, out)
    if existing and not overwrite:
        raise TuneError(f"{' and '.join(map(str, existing))} already exist(s). Pass --force to overwrite, or "
                        "--name NEW_NAME.", field="--name")
    try:
        return write_files(rendered, out)
    except OSError as e:
        raise TuneError(f"--out '{out}': cannot write the recipe there ({e.strerror}). Choose a writable folder.",
                        field="--out") from None
