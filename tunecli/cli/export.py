"""`tune export RUN_DIR`: a trained run's checkpoint -> a LoRA adapter directory and/or a merged HF model."""

from __future__ import annotations

from pathlib import Path

import typer

from tunecli import console
from tunecli.errors import TuneError

EPILOG = (
    "Examples:  tune export runs/quickstart  ·  tune export runs/quickstart --what adapter  ·  "
    "tune export runs/quickstart --step 20 --out exported/  ·  tune export runs/quickstart --what merged --dtype bfloat16 --push-to-hub me/quickstart"
)


def register(app: typer.Typer) -> None:
    @app.command("export", epilog=EPILOG)
    def export(
        run_dir: Path = typer.Argument(..., help="Run directory of a `tune train` run (default runs/NAME)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output directory (default RUN_DIR/export)."),
        step: int = typer.Option(None, "--step", help="Checkpoint step to export (default: the latest)."),
        what: str = typer.Option("both", "--what", help="adapter, merged, or both (LoRA runs); full runs: merged."),
        dtype: str = typer.Option(None, "--dtype", help="The merged model's dtype: bfloat16, float16 or float32 (default: the training dtype)."),
        push_to_hub: str = typer.Option(None, "--push-to-hub", metavar="REPO", help="Then upload the merged model (else the adapter) to this hub repo, as one commit."),
        private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repo private."),
    ) -> None:
        """Write the trained LoRA adapter and/or a merged HF model directory from a run's checkpoint."""
        try:
            from tunecli.trainer.export import check_can_push, export_run, push_to_hub as push  # torch: only when exporting

            if push_to_hub:
                check_can_push(push_to_hub)  # before the slow export: an offline push fails in a second
            written = export_run(run_dir, out, step, what, dtype)
            for kind, path in written.items():
                console.success(f"{kind}: {path}")
            if push_to_hub:
                folder = written.get("merged") or written["adapter"]
                console.success(f"pushed {folder} to {push(folder, push_to_hub, private=private)}")
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None

