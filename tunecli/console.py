"""One rich Console for every command: info/success/warning on stdout, errors on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def info(msg: str) -> None:
    out.print(msg)


def success(msg: str) -> None:
    out.print(f"[green]✓[/green] {msg}")


def warning(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(msg)}", overflow="ignore", crop=False)


def error(msg: str) -> None:
    # Messages quote user values ([a,b], paths): never read them as markup, and never fold them
    # (a path cut in two cannot be copied); the terminal wraps the long line.
    err.print(f"[red bold]error:[/red bold] {escape(msg)}", overflow="ignore", crop=False)


def table(title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    out.print(t)
