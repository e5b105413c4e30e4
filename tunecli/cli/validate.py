"""`tune validate FILE.yaml|FILE.sh`: every `tune new` check, plus the script/YAML pair's integrity.

Nothing here runs user code: a custom reward file is parsed, never imported (``rewards.spec``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tunecli import console
from tunecli.errors import TuneError

if TYPE_CHECKING:
    from tunecli.config.io import RecipeFile


def _pair(path: Path) -> tuple[Path, Path | None]:
    """(NAME.yaml, NAME.sh or None) for either file."""
    from tunecli.config.header import read_script_header

    if not path.exists():
        raise TuneError(f"'{path}' does not exist. Pass a NAME.yaml or NAME.sh written by `tune new`.", field="path")
    if path.suffix == ".sh":
        header = read_script_header(path)
        if header is None:
            raise TuneError(f"'{path}' has no '# tunecli-recipe:' header, so it was not written by `tune new`. "
                            "Validate its YAML instead, or re-render it with `tune new`.", field="path")
        return path.parent / header.yaml, path
    if path.suffix not in (".yaml", ".yml"):
        raise TuneError(f"'{path}' is neither a .yaml config nor a .sh launch script written by `tune new`.", field="path")
    sh = path.with_suffix(".sh")
    return path, sh if sh.exists() else None


def _script_ok(sh_path: Path, checked: RecipeFile, *, fix_hash: bool, checks_ok: bool, asked_for_script: bool) -> bool:
    """The script's side: verified, or why not; with --fix-hash, accept an edited YAML (never an edited script)."""
    from tunecli.config.header import read_script_header
    from tunecli.launch.integrity import ScriptNotTrusted, YamlChanged, verify_script

    yaml_path = checked.path
    header = read_script_header(sh_path)
    if header is None or not header.current:
        what = "has no tunecli header" if header is None else f"has the header of tunecli {header.version}, which hashed only the YAML"
        message = (f"{sh_path} {what}, so its body cannot be checked and `tune run {sh_path.name}` needs --trust. Re-render "
                   f"both files with `tune new ... --force`, or run the YAML alone: `tune run {yaml_path}`.")
        if fix_hash:
            raise TuneError(f"--fix-hash updates the hash of a script this tunecli wrote; {message}", field="recipe-sha256")
        (console.error if asked_for_script else console.warning)(message)
        return not asked_for_script
    if header.yaml != yaml_path.name:
        console.warning(f"{sh_path.name} runs {header.yaml}, not {yaml_path.name}: validate {sh_path} to check that pair.")
        return True
    try:
        verify_script(sh_path)
    except ScriptNotTrusted as e:
        console.error(f"{e.difference}. `tune run {sh_path.name}` refuses it without --trust"
                      + (", and --fix-hash accepts an edited YAML, never an edited script: the hash was not updated"
                         if fix_hash else "")
                      + ". Undo the edit, or re-render both files with `tune new ... --force`.")
        return False
    except YamlChanged as changed:
        if changed.yaml_file.data != checked.data:
            raise TuneError(f"{yaml_path} changed while it was being checked; nothing was updated. Run the command again.",
                            field="recipe-sha256") from None
        if fix_hash and checks_ok:
            from tunecli.authoring.render import write_script
            from tunecli.config.header import stamp

            # Stamped from the bytes that were checked, so a file changed meanwhile still fails to match.
            write_script(sh_path, stamp(changed.data.decode("utf-8", errors="replace"), changed.yaml_file.data, changed.header.yaml))
            console.success(f"{sh_path.name}: header hash updated for the edited {yaml_path.name}.")
            return True
        if fix_hash:
            console.error(f"{sh_path.name}: hash not updated because the checks above failed.")
        else:
            console.error(f"{yaml_path.name} changed after {sh_path.name} was written (the script's header hash "
                          f"does not match). Review the change, then run: tune validate --fix-hash {yaml_path}")
        return False
    return True


def validate(path: Path, fix_hash: bool) -> bool:
    from tunecli.authoring.checks import check_recipe
    from tunecli.config.io import read_recipe_file

    yaml_path, sh_path = _pair(path)
    yaml_file = read_recipe_file(yaml_path)
    empty = yaml_file.empty_warning()
    if empty:
        console.warning(empty)
    recipe = yaml_file.recipe()
    report = check_recipe(recipe)
    for w in report.warnings:
        console.warning(w)
    for e in report.errors:
        console.error(str(e))
    if yaml_path.stem != recipe.name:
        console.warning(f"{yaml_path.name} holds recipe name '{recipe.name}'; the trainer names its run after the field.")
    ok = report.ok
    if sh_path is not None:
        ok = _script_ok(sh_path, yaml_file, fix_hash=fix_hash, checks_ok=ok, asked_for_script=path == sh_path) and ok
    if ok:
        console.success(f"{yaml_path} passes every check." + (
            f" Peak memory estimate {report.memory.peak / 2**30:.1f} of {report.memory.budget / 2**30:.1f} GiB per device."
            if report.memory else ""))
    return ok


def register(app: typer.Typer) -> None:
    @app.command("validate", epilog="Examples:  tune validate generated/NAME.yaml  ·  tune validate --fix-hash generated/NAME.yaml")
    def validate_cmd(
        path: Path = typer.Argument(..., metavar="FILE", help="NAME.yaml or NAME.sh written by tune new."),
        fix_hash: bool = typer.Option(False, "--fix-hash", help="Accept an edited YAML: update the hash in NAME.sh."),
    ) -> None:
        """Run every check on a recipe; exit 0 if it can run, 1 if not."""
        try:
            ok = validate(path, fix_hash)
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None
        raise typer.Exit(0 if ok else 1)
