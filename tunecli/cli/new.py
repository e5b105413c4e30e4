"""`tune new` (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    @app.command("new", hidden=True)
    def _cmd() -> None:
        raise typer.Exit(2)
