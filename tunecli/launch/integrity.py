"""Is NAME.sh exactly what tunecli writes for NAME.yaml? The check behind `tune run` and `tune validate`.

A script is verified when
  1. its header is this tunecli's (``recipe-sha256=``, see ``config.header``), naming a YAML beside it;
  2. its body (every line but the header) is, byte for byte, what ``authoring.render`` writes for that
     YAML; and
  3. the header's hash matches the body and the YAML's bytes.
Each file is read once; the YAML's recipe is parsed from the bytes that were hashed.

Why `tune run` then does not hand the file to bash: (2) means the script does nothing but start the
trainer command that ``plan.trainer_command`` builds, so `tune run` starts that command itself and
gives the trainer the YAML's sha256 (``--config-sha256``); a script swapped after the check never
runs, and a YAML swapped after it is refused by the trainer before it imports anything
(``config.io.read_recipe_file``). sbatch gets a private copy of the checked bytes (``plan``).

A script that fails (1) or (2) was not written by this tunecli as it stands: it runs only with
``--trust`` (``ScriptNotTrusted``). A script that passes (2) but not (3) has an edited YAML: that is
refused with what changed, until ``tune validate --fix-hash`` checks and accepts it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunecli import __version__
from tunecli.authoring.render import render, render_yaml
from tunecli.config.header import HEADER_PREFIX, ScriptHeader, recipe_sha256, split_script
from tunecli.config.io import RecipeFile, dump_recipe, read_recipe_file
from tunecli.config.keys import changed_leaves
from tunecli.config.paths import latest_checkpoint, run_dir
from tunecli.config.schema import Recipe
from tunecli.errors import TuneError

_SHOWN_CHARS = 100  # of a changed line, in a refusal


class ScriptNotTrusted(TuneError):
    """A refusal that ``tune run --trust`` lifts: the script is not what this tunecli writes."""

    def __init__(self, message: str, *, field: str | None = None, difference: str | None = None):
        super().__init__(message, field=field)
        self.difference = difference  # the first line that differs, when the body was compared


class YamlChanged(TuneError):
    """The script is what tunecli writes, but the YAML is not the one its hash covers (see ``hash_mismatch_message``)."""

    def __init__(self, message: str, *, data: bytes, header: ScriptHeader, yaml_file: RecipeFile):
        super().__init__(message, field="recipe-sha256")
        self.data, self.header, self.yaml_file = data, header, yaml_file  # as checked: what --fix-hash stamps


@dataclass(frozen=True)
class VerifiedScript:
    script: Path
    header: ScriptHeader
    data: bytes  # the script's bytes, as checked
    yaml: RecipeFile  # the YAML's bytes, as checked
    recipe: Recipe  # parsed from those bytes, without overrides


def read_script(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise TuneError(f"'{path}' cannot be read ({err.strerror}). Check the path and its permissions.", field="recipe") from None


def untrusted_header_error(path: Path, header: ScriptHeader | None) -> ScriptNotTrusted:
    if header is None:
        why = f"it has no '{HEADER_PREFIX}' header line"
    else:
        why = (f"its header comes from tunecli {header.version}, which hashed only the YAML, so its body "
               "cannot be checked")
    return ScriptNotTrusted(
        f"'{path}' was not written by tunecli as it is now: {why}, so `tune run` will not execute it. Read it first; if "
        f"you trust it, run it with `tune run --trust {path}`, run its YAML directly (`tune run NAME.yaml`), or "
        "write a checked recipe with `tune new`.",
        field="recipe",
    )


def _shown(line: str) -> str:
    line = line.rstrip("\n")
    return repr(line if len(line) <= _SHOWN_CHARS else line[:_SHOWN_CHARS] + "…")


def first_difference(data: bytes, header_index: int, fresh: str) -> str:
    """Where the script first departs from ``fresh`` (what tunecli writes), by the script's line numbers."""
    lines = data.splitlines(keepends=True)
    numbers = [i + 1 for i in range(len(lines)) if i != header_index]
    ours = [lines[n - 1].decode("utf-8", errors="replace") for n in numbers]
    fresh_header = split_script(fresh.encode("utf-8"))[0]
    fresh_lines = fresh.encode("utf-8").splitlines(keepends=True)
    theirs = [ln.decode("utf-8") for i, ln in enumerate(fresh_lines) if fresh_header is None or i != fresh_header.index]
    matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
    for tag, i1, _, j1, _ in matcher.get_opcodes():
        if tag == "replace":
            return f"line {numbers[i1]} reads {_shown(ours[i1])} where tunecli writes {_shown(theirs[j1])}"
        if tag == "delete":
            return f"line {numbers[i1]} is extra: {_shown(ours[i1])}"
        if tag == "insert":
            where = f"before line {numbers[i1]}" if i1 < len(numbers) else "at the end"
            return f"{_shown(theirs[j1])} is missing {where}"
    return "its bytes differ from what tunecli writes (an encoding or a line ending)"


def body_differs_error(path: Path, header: ScriptHeader, yaml_path: Path, difference: str) -> ScriptNotTrusted:
    why = ("the script was edited, or the YAML's launch section or name changed after it was written"
           if header.version == __version__ else
           f"it was written by tunecli {header.version}, and this tunecli {__version__} writes it differently, or it was edited")
    differs = f"{path.name} differs from what tunecli writes for {yaml_path.name}: {difference}"
    return ScriptNotTrusted(
        f"Refusing to run {path}: {differs} ({why}). Only a script that matches runs without `--trust`. Undo the "
        f"edit, or re-render both files with `tune new ... --force`; if you read the script and trust it as it is, "
        f"run `tune run --trust {path}`.",
        field="recipe",
        difference=differs,
    )


def verify_script(path: Path, data: bytes | None = None) -> VerifiedScript:
    """Check a script/YAML pair (see the module docstring); a TuneError (or ScriptNotTrusted) explains a refusal."""
    data = read_script(path) if data is None else data
    header, body = split_script(data)
    if header is None or not header.current:
        raise untrusted_header_error(path, header)
    yaml_path = path.parent / header.yaml
    if not yaml_path.is_file():
        raise TuneError(
            f"{path} runs {yaml_path}, which does not exist. Keep NAME.sh and NAME.yaml together in one "
            "folder, or re-render both with `tune new`.",
            field="recipe",
        )
    yaml_file = read_recipe_file(yaml_path)
    actual = recipe_sha256(body, yaml_file.data)
    try:
        recipe = yaml_file.recipe()
    except TuneError:
        if actual != header.recipe_sha256:
            raise YamlChanged(hash_mismatch_message(path, yaml_file), data=data, header=header, yaml_file=yaml_file) from None
        raise
    fresh = render(recipe, out_dir=yaml_path.parent).script_text
    if split_script(fresh.encode("utf-8"))[1] != body:
        raise body_differs_error(path, header, yaml_path, first_difference(data, header.index, fresh))
    if actual != header.recipe_sha256:
        raise YamlChanged(hash_mismatch_message(path, yaml_file), data=data, header=header, yaml_file=yaml_file)
    return VerifiedScript(path, header, data, yaml_file, recipe)


def value_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every leaf that differs between two recipe dicts."""
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed_leaves(before, after).items()]


def _last_run_config(recipe: Recipe) -> tuple[Path, dict[str, Any]] | None:
    """The config saved with the latest checkpoint of this recipe's run, if one exists under the cwd."""
    ckpt = latest_checkpoint(run_dir(recipe))
    if ckpt is None:
        return None
    try:
        return ckpt, yaml.safe_load((ckpt / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def _yaml_change(yaml_file: RecipeFile) -> str:
    """What is known about how the YAML changed: the header keeps a hash, not the old values."""
    try:
        recipe = yaml_file.recipe()
    except TuneError as e:
        return f"it no longer validates: {e}"
    last = _last_run_config(recipe)
    if last is not None:
        ckpt, saved = last
        changes = value_changes(saved, dump_recipe(recipe))
        if changes:
            return f"compared with the config of the last checkpoint ({ckpt}): " + "; ".join(changes)
        return f"its values are the same as in the last checkpoint ({ckpt}); only comments or layout changed"
    if render_yaml(recipe).encode("utf-8") == yaml_file.data:
        return "its values changed (the header keeps only a hash, not the old values: `git diff` shows them if the file is tracked)"
    return "its values, comments or layout changed (`git diff` shows what, if the file is tracked)"


def hash_mismatch_message(script: Path, yaml_file: RecipeFile) -> str:
    """Refusal for a YAML edited after rendering: what is known about the change, and how to accept it."""
    yaml_path = yaml_file.path
    return (
        f"Refusing to run: {yaml_path} changed after `tune new` wrote {script} (the recipe-sha256 in the script's "
        f"header no longer matches); {_yaml_change(yaml_file)}. Hand edits skip the checks `tune new` ran (batch "
        f"divisibility, memory). If the edit is intended, check and accept it with `tune validate --fix-hash "
        f"{yaml_path}`, then run again; otherwise re-render the recipe with `tune new`."
    )
