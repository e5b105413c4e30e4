"""`tune data gsm8k`: write the data files a preset needs."""

from __future__ import annotations

from pathlib import Path

import typer

from tunecli import console
from tunecli.errors import TuneError

EPILOG = ("Examples:  tune data gsm8k  ·  tune data gsm8k --out data/gsm8k  ·  "
          "tune data gsm8k --from ../shared/data/gsm8k (a local train.jsonl/test.jsonl copy)")


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Write the data files a preset needs.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("gsm8k", epilog=EPILOG)
    def gsm8k(
        out: Path = typer.Option(Path("data/gsm8k"), "--out", "-o", help="Folder for train.parquet and test.parquet."),
        source: str = typer.Option("openai/gsm8k", "--from", metavar="SOURCE",
                                   help="openai/gsm8k (the Hub or its local cache) or a folder with train.jsonl/test.jsonl."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    ) -> None:
        """GSM8K as verl-format parquet (prompt, reward_model.ground_truth, extra_info), as the GSM8K presets read it."""
        from tunecli.data.gsm8k import write_gsm8k

        try:
            written = write_gsm8k(out, source, force=force)
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None
        for split, (path, rows) in written.items():
            console.success(f"{split}: {path} ({rows} rows)")
