"""`tune train --config NAME.yaml [section.key=value ...]`: run the bundled GRPO trainer in this process."""

from __future__ import annotations

import shlex

import typer

from tunecli.cli import console
from tunecli.errors import TuneError

EPILOG = (
    "Examples:  tune train --config generated/quickstart.yaml  ·  "
    "tune train --config q.yaml trainer.total_training_steps=5 actor.lr=1e-5  ·  "
    "tune train --config q.yaml --no-resume"
)


def register(app: typer.Typer) -> None:
    @app.command("train", epilog=EPILOG)
    def train(
        config: str = typer.Option(..., "--config", "-c", help="Recipe NAME.yaml (or NAME.sh)."),
        overrides: list[str] = typer.Argument(None, help="section.key=value overrides, e.g. rollout.n=8"),
        no_resume: bool = typer.Option(False, "--no-resume", help="Start over instead of resuming the latest checkpoint."),
    ) -> None:
        """Train a recipe with GRPO in this process (one rank; `tune run` starts several)."""
        from tunecli.recipe.io import load_recipe

        overrides = overrides or []
        try:
            recipe = load_recipe(config, overrides)
            if recipe.launch.world_size > 1:
                console.warning(
                    f"The recipe asks for {recipe.launch.world_size} processes; `tune train` runs one. "
                    "Use `tune run NAME.sh` to start them all."
                )
            from tunecli.trainer.loop import run_training

            hint = "`" + shlex.join(["tune", "train", "--config", config, *overrides]) + "`"
            code = run_training(recipe, resume=False if no_resume else None, resume_hint=hint)
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None
        raise typer.Exit(code)
