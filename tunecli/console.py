"""One rich Console for every command: info/success/warning on stdout, errors on stderr.

Also the one switch for the libraries' chatter (``quiet_libraries``): by default the console holds the
product's own lines only; ``--verbose`` (or ``TUNECLI_VERBOSE=1``, or a library's own variable such as
``VLLM_LOGGING_LEVEL``) brings the libraries' warnings and progress bars back.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from rich.console import Console
from rich.markup import escape
from rich.table import Table

VERBOSE_ENV = "TUNECLI_VERBOSE"

# Each library's own switch, read when it is imported (so set before): a user's value always wins.
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM's start-up notes (LD_PRELOAD, Triton, set_num_threads, ...)
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # c10 warnings such as the NUMA binding note
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' and huggingface_hub's tqdm bars
    "TQDM_DISABLE": "1",  # any other tqdm bar (vLLM's shard loading, the GGUF conversion)
    "DATASETS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore",  # child processes (torchrun workers) start quiet too
}
# Python loggers whose WARNINGs are library notes, not the product's.
_IGNORE_ALL = ("ignore", None, Warning, None, 0)  # the entry warnings.simplefilter("ignore") adds
_set_here: set[str] = set()  # the variables quiet_libraries set (a user's own are never touched)
QUIET_LOGGERS = ("vllm", "transformers", "torch", "datasets", "huggingface_hub", "peft", "accelerate")


def _console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr, highlight=False)
    # Sent to a file (SLURM, nohup, a pipe), a line stays one line: no folding at 80 columns.
    c.soft_wrap = not c.is_terminal
    return c


out = _console()
err = _console(stderr=True)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def quiet_libraries(verbose: bool = False) -> None:
    """Quiet the libraries' warnings, notes and bars unless ``verbose`` (or TUNECLI_VERBOSE=1). Call
    before torch, transformers or vLLM are imported; child processes inherit the choice."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    if is_verbose():
        for name in _set_here:  # a command's own --verbose after the app's quiet default
            os.environ.pop(name, None)
        _set_here.clear()
        if _IGNORE_ALL in warnings.filters:
            warnings.filters.remove(_IGNORE_ALL)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        return
    for name, value in QUIET_ENV.items():
        if name not in os.environ:
            os.environ[name] = value
            _set_here.add(name)
    if os.environ["PYTHONWARNINGS"] == "ignore":
        warnings.simplefilter("ignore")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Already imported (read their variables too early): their own switches, without importing anything.
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()


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
