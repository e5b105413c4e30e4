"""`tune validate FILE.yaml|FILE.sh`: every `tune new` check, plus the script's hash of its YAML."""

from __future__ import annotations

from pathlib import Path

import typer


from tunecli import console
from tunecli.errors import TuneError


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
        return path.parent / header.get("yaml", path.with_suffix(".yaml").name), path
    if path.suffix not in (".yaml", ".yml"):
        raise TuneError(f"'{path}' is neither a .yaml config nor a .sh launch script written by `tune new`.", field="path")
    sh = path.with_suffix(".sh")
    return path, sh if sh.exists() else None


def validate(path: Path, fix_hash: bool) -> bool:
    from tunecli.authoring.checks import check_recipe
    from tunecli.config.io import load_recipe
    from tunecli.authoring.render import render
    from tunecli.config.header import read_script_header, replace_header_hash, yaml_hash

    yaml_path, sh_path = _pair(path)
    recipe = load_recipe(yaml_path)
    report = check_recipe(recipe)
    for w in report.warnings:
        console.warning(w)
    for e in report.errors:
        console.error(str(e))
    if yaml_path.stem != recipe.name:
        console.warning(f"{yaml_path.name} holds recipe name '{recipe.name}'; the trainer names its run after the field.")
    ok = report.ok
    if sh_path is not None:
        header = read_script_header(sh_path) or {}
        actual = yaml_hash(yaml_path)
        script = sh_path.read_text()
        fresh = render(recipe, out_dir=yaml_path.parent).script_text
        body_differs = script.splitlines()[2:] != fresh.splitlines()[2:]
        if header.get("yaml_sha256") != actual:
            if fix_hash and ok:
                sh_path.write_text(replace_header_hash(script, actual))
                console.success(f"{sh_path.name}: header hash updated for the edited {yaml_path.name}.")
            elif fix_hash:
                console.error(f"{sh_path.name}: hash not updated because the checks above failed.")
            else:
                console.error(f"{yaml_path.name} changed after {sh_path.name} was written (the script's header hash "
                              f"does not match). Review the change, then run: tune validate --fix-hash {yaml_path}")
                ok = False
        if body_differs:
            console.warning(f"{sh_path.name} differs from what `tune new` renders for this YAML (edited by hand, or "
                            "the launch section changed): re-render with `tune new ... --force` if needed.")
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
