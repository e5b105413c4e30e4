"""`tune export RUN_DIR`: a trained run's checkpoint -> a LoRA adapter directory and/or a merged HF model."""

from __future__ import annotations

from pathlib import Path

import typer

from tunecli import console
from tunecli.errors import TuneError

EPILOG = (
    "Examples:  tune export runs/quickstart  ·  tune export runs/quickstart --what adapter  ·  "
    "tune export runs/quickstart --step 20 --out exported/"
)


def register(app: typer.Typer) -> None:
    @app.command("export", epilog=EPILOG)
    def export(
        run_dir: Path = typer.Argument(..., help="Run directory of a `tune train` run (default runs/NAME)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output directory (default RUN_DIR/export)."),
        step: int = typer.Option(None, "--step", help="Checkpoint step to export (default: the latest)."),
        what: str = typer.Option("both", "--what", help="adapter, merged, or both (LoRA runs); full runs: merged."),
    ) -> None:
        """Write the trained LoRA adapter and/or a merged HF model directory from a run's checkpoint."""
        try:
            from tunecli.trainer.export import export_run  # torch: only when exporting

            written = export_run(run_dir, out, step, what)
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None
        for kind, path in written.items():
            console.success(f"{kind}: {path}")
