"""`tune export RUN_DIR`: a trained run's checkpoint -> a LoRA adapter directory and/or a merged HF model."""

from __future__ import annotations

from pathlib import Path

import typer

from tunecli.cli import console
from tunecli.errors import TuneError

EPILOG = (
    "Examples:  tune export runs/quickstart  ·  tune export runs/quickstart --what adapter  ·  "
    "tune export runs/quickstart --step 20 --out exported/"
)


def export_run(run_dir: Path, out: Path | None = None, step: int | None = None, what: str = "both") -> dict[str, Path]:
    """Write ``adapter/`` (peft, LoRA runs) and/or ``merged/`` (plain HF model) under ``out``."""
    import yaml

    from tunecli.recipe.io import recipe_from_dict
    from tunecli.trainer import checkpoint

    run_dir = Path(run_dir)
    if step is None:
        ckpt = checkpoint.latest_checkpoint(run_dir)
    else:
        ckpt = checkpoint.checkpoints_dir(run_dir) / f"step_{step}"
        ckpt = ckpt if (ckpt / "config.yaml").is_file() else None
    if ckpt is None:
        found = sorted(p.name for p in checkpoint.checkpoints_dir(run_dir).glob("step_*")) if run_dir.is_dir() else []
        raise TuneError(
            f"No checkpoint{'' if step is None else f' step_{step}'} in '{run_dir}/checkpoints' "
            f"(found: {', '.join(found) or 'none'}). Pass the run directory of a `tune train` run (default runs/NAME).",
            field="RUN_DIR",
        )
    recipe = recipe_from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()), source=str(ckpt / "config.yaml"))
    is_lora = recipe.model.method == "lora"
    if what == "adapter" and not is_lora:
        raise TuneError("--what adapter: this run trained every weight (model.method full), so it has no adapter. Use --what merged.")
    out = Path(out) if out else run_dir / "export"

    import torch

    from tunecli.trainer.policy import load_policy

    policy = load_policy(recipe, torch.device("cpu"), with_reference=False)
    checkpoint.load(ckpt, policy.model, None)
    written: dict[str, Path] = {}
    if is_lora and what in ("adapter", "both"):
        policy.model.save_pretrained(out / "adapter")
        policy.tokenizer.save_pretrained(out / "adapter")
        written["adapter"] = out / "adapter"
    if what in ("merged", "both"):
        model = policy.model.merge_and_unload() if is_lora else policy.model
        model.config.use_cache = True  # the trainer turned it off for training passes
        model.save_pretrained(out / "merged", safe_serialization=True)
        policy.tokenizer.save_pretrained(out / "merged")
        written["merged"] = out / "merged"
    return written


def register(app: typer.Typer) -> None:
    @app.command("export", epilog=EPILOG)
    def export(
        run_dir: Path = typer.Argument(..., help="Run directory of a `tune train` run (default runs/NAME)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output directory (default RUN_DIR/export)."),
        step: int = typer.Option(None, "--step", help="Checkpoint step to export (default: the latest)."),
        what: str = typer.Option("both", "--what", help="adapter, merged, or both (LoRA runs); full runs: merged."),
    ) -> None:
        """Write the trained LoRA adapter and/or a merged HF model directory from a run's checkpoint."""
        if what not in ("adapter", "merged", "both"):
            console.error(f"--what must be adapter, merged or both, not '{what}'.")
            raise typer.Exit(1)
        try:
            written = export_run(run_dir, out, step, what)
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None
        for kind, path in written.items():
            console.success(f"{kind}: {path}")
