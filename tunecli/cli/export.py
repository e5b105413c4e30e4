"""`tune export` (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    @app.command("export", hidden=True)
    def _cmd() -> None:
        raise typer.Exit(2)
