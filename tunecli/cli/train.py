"""`tune train --config NAME.yaml [section.key=value ...]`: run the bundled GRPO trainer in this process."""

from __future__ import annotations

import typer

from tunecli import console
from tunecli.errors import TuneError
from tunecli.train import (BREAK_LOCK_HELP, CONFIG_SHA256_FLAG, CONFIG_SHA256_HELP, NO_RESUME_HELP, OVERWRITE_HELP,
                           train as train_recipe)

EPILOG = (
    "Examples:  tune train --config generated/quickstart.yaml  ·  "
    "tune train --config q.yaml trainer.total_training_steps=5 actor.lr=1e-5  ·  "
    "tune train --config q.yaml --no-resume"
)


def _checked_recipe(config: str, overrides: list[str], config_sha256: str | None):
    """The recipe with its overrides, through every `tune new` check (the trainer layer sits below them)."""
    from tunecli.authoring.checks import check_recipe
    from tunecli.config.io import read_recipe_file

    recipe_file = read_recipe_file(config, expect_sha256=config_sha256)
    empty = recipe_file.empty_warning()
    if empty:
        console.warning(empty)
    recipe = recipe_file.recipe(overrides)
    report = check_recipe(recipe)
    for w in report.warnings:
        console.warning(w)
    for e in report.errors:
        console.error(str(e))
    return recipe if report.ok else None


def register(app: typer.Typer) -> None:
    @app.command("train", epilog=EPILOG)
    def train(
        config: str = typer.Option(..., "--config", "-c", help="Recipe NAME.yaml (or NAME.sh)."),
        overrides: list[str] = typer.Argument(None, help="section.key=value overrides, e.g. rollout.n=8"),
        no_resume: bool = typer.Option(False, "--no-resume", help=NO_RESUME_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
        break_lock: bool = typer.Option(False, "--break-lock", help=BREAK_LOCK_HELP),
        config_sha256: str | None = typer.Option(None, CONFIG_SHA256_FLAG, metavar="HEX", help=CONFIG_SHA256_HELP),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' warnings and progress bars too."),
    ) -> None:
        """Check a recipe and train it with GRPO in this process (one rank; `tune run` starts several)."""
        console.quiet_libraries(verbose)
        overrides = overrides or []
        try:
            recipe = _checked_recipe(config, overrides, config_sha256)
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None
        if recipe is None:
            raise typer.Exit(1)
        command = ["tune", "train", "--config", config, *overrides]
        raise typer.Exit(train_recipe(config, overrides, no_resume=no_resume, overwrite=overwrite,
                                      break_lock=break_lock, recipe=recipe, command=command))
