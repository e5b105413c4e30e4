"""`tune list`: the catalogue as tables (or JSON)."""

from __future__ import annotations

import json
from typing import Any

import typer

from rich.markup import escape

from tunecli import console
from tunecli.errors import TuneError, did_you_mean



def _rows(menu: str, entries: list[Any]) -> tuple[list[str], list[list[str]]]:
    if menu == "presets":
        # The name already says model, method, GPU count and type (the naming rule).
        return ["preset", "about"], [
            [p.name, p.description + (f" (verl: {p.verl_script})" if p.verl_script else "")] for p in entries
        ]
    if menu == "models":
        return ["model", "params", "layers", "hidden", "heads/kv", "vocab", "context"], [
            [m.name, f"{m.params_b:g}B", str(m.layers), str(m.hidden), f"{m.heads}/{m.kv_heads}", str(m.vocab),
             str(m.max_position)]
            for m in entries
        ]
    if menu == "hardware":
        return ["hardware", "memory", "bf16", "about"], [
            [h.name, f"{h.memory_bytes() / 2**30:.4g} GiB" + ("" if h.memory_gib else " RAM"), "yes" if h.bf16 else "no",
             h.description]
            for h in entries
        ]
    singular = menu[:-3] + "y" if menu.endswith("ies") else menu.removesuffix("s")  # strategies -> strategy
    return [singular, "about"], [[e.name, e.description] for e in entries]


def _matches(entry: Any, text: str) -> bool:
    blob = json.dumps(entry.model_dump(mode="json"), default=str).lower()
    return text.lower() in blob


def register(app: typer.Typer) -> None:
    @app.command(
        "list",
        epilog="Examples:  tune list  ·  tune list models --filter qwen2.5  ·  tune list presets --filter lora  ·  "
        "tune list hardware --json",
    )
    def list_cmd(
        menu: str = typer.Argument("presets", metavar="[MENU]", help="presets, models, algorithms, methods, hardware, engines, "
                                   "strategies, datasets or rewards."),
        filter_: str | None = typer.Option(None, "--filter", "-f", metavar="TEXT", help="Only rows containing TEXT (e.g. 7b, lora)."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Show the catalogue: presets (default), models, hardware, ..."""
        from tunecli.catalog import Catalog, load_catalog

        menus = Catalog.MENUS
        try:
            if menu not in menus:
                raise TuneError(f"'{menu}' is not a catalogue menu{did_you_mean(menu, menus)}. "
                                f"Choose one of: {', '.join(menus)}.", field="menu")
            entries = load_catalog().menu(menu)
            if filter_:
                entries = [e for e in entries if _matches(e, filter_)]
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
            return
        if not entries:
            console.warning(f"no {menu} match '{filter_}'.")
            return
        from rich.table import Table

        columns, rows = _rows(menu, entries)
        table = Table(header_style="bold", show_lines=menu == "presets")
        table.add_column(columns[0], no_wrap=True)  # names stay copy-pasteable
        for c in columns[1:]:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*(escape(x) for x in r))
        console.out.print(table)
