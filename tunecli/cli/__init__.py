"""The `tune` app. This module only joins the commands; each lives in its own module."""

from __future__ import annotations

import sys

import typer

from tunecli import __version__
from tunecli import console
from tunecli.errors import TuneError

app = typer.Typer(
    name="tune",
    help="Write and run GRPO post-training recipes.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples:  tune list  ·  tune new  ·  tune new --preset quickstart --yes  ·  tune run generated/NAME.sh",
)


def _register() -> None:
    # Imported here so `tune --help` stays fast; heavy libraries load inside each command.
    from tunecli.cli import data, eval as eval_cmd, export, list as list_cmd, new, run, status, train, validate

    for module in (list_cmd, new, validate, run, status, train, eval_cmd, export, data):
        module.register(app)


def _version(value: bool) -> None:
    if value:
        console.info(f"tunecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' warnings and progress bars too (or TUNECLI_VERBOSE=1)."),
) -> None:
    """Write and run GRPO post-training recipes."""
    console.quiet_libraries(verbose)  # before any command imports torch, transformers or vLLM


_register()


def main() -> None:
    try:
        app(standalone_mode=True)
    except TuneError as e:  # normally caught in commands; this is the last safety net
        console.error(str(e))
        sys.exit(1)
