"""`tune train --config NAME.yaml [section.key=value ...]`: run the bundled GRPO trainer in this process."""

from __future__ import annotations

import typer

from tunecli.train import BREAK_LOCK_HELP, NO_RESUME_HELP, OVERWRITE_HELP, train as train_recipe

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
        no_resume: bool = typer.Option(False, "--no-resume", help=NO_RESUME_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
        break_lock: bool = typer.Option(False, "--break-lock", help=BREAK_LOCK_HELP),
    ) -> None:
        """Train a recipe with GRPO in this process (one rank; `tune run` starts several)."""
        overrides = overrides or []
        command = ["tune", "train", "--config", config, *overrides]
        raise typer.Exit(train_recipe(config, overrides, no_resume=no_resume, overwrite=overwrite,
                                      break_lock=break_lock, command=command))
