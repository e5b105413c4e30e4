"""``python -m tunecli.train --config NAME.yaml [section.key=value ...]``: the trainer's one entry point.

This is what torchrun starts once per rank (``tune run``); ``tune train`` calls ``train`` in its own
process. Exit codes: 0 done, 1 user error (one paragraph, no traceback), 130 interrupted.

``--config-sha256`` (what `tune run` passes after checking the YAML) makes the trainer read the YAML's
bytes once and refuse them unless they are the checked ones, before any reward import or model load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

from tunecli import console
from tunecli.config.io import load_recipe
from tunecli.config.schema import Recipe
from tunecli.errors import EXIT_INTERRUPTED, TuneError


# The flags that choose how a run starts; `tune run`, `tune train` and this entry point share them.
NO_RESUME_HELP = "Start over instead of resuming the latest checkpoint; the old run is moved aside (RUN_DIR.1)."
OVERWRITE_HELP = "Start over (implies --no-resume) and delete the old run instead of moving it aside."
BREAK_LOCK_HELP = "Take over a run directory whose lock names a process that cannot be checked from here."
CONFIG_SHA256_FLAG = "--config-sha256"
CONFIG_SHA256_HELP = "Refuse the config unless its bytes have this sha256 (`tune run` passes the hash it checked)."
START_FLAGS = ("--no-resume", "--overwrite", "--break-lock")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tunecli.train", description="Run the bundled GRPO trainer.")
    parser.add_argument("--config", required=True, help="Recipe NAME.yaml (or NAME.sh: its YAML is used).")
    parser.add_argument("--no-resume", action="store_true", help=NO_RESUME_HELP)
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--break-lock", action="store_true", help=BREAK_LOCK_HELP)
    parser.add_argument(CONFIG_SHA256_FLAG, metavar="HEX", help=CONFIG_SHA256_HELP)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. actor.lr=1e-5")
    return parser.parse_args(argv)


def train(
    config: str,
    overrides: list[str],
    *,
    no_resume: bool = False,
    overwrite: bool = False,
    break_lock: bool = False,
    config_sha256: str | None = None,
    recipe: Recipe | None = None,
    command: list[str],
) -> int:
    """Load the recipe (unless the caller passes the one it loaded and checked), train it in this process,
    and return the exit code (1 for a user error).

    ``command`` is how the user started this run; an interrupted run tells them to type it again.
    """
    try:
        if recipe is None:
            recipe = load_recipe(config, overrides, expect_sha256=config_sha256)
        if recipe.launch.world_size > 1 and "WORLD_SIZE" not in os.environ:
            console.warning(
                f"The recipe asks for {recipe.launch.world_size} processes; this runs one. "
                "Use `tune run NAME.sh` to start them all."
            )
        from tunecli.trainer.loop import run_training  # torch and transformers: only for a real run

        hint = resume_hint("`" + shlex.join(_without_start_flags(command)) + "`")
        return run_training(recipe, resume=False if no_resume else None, overwrite=overwrite,
                            break_lock=break_lock, resume_hint=hint)
    except TuneError as e:
        console.error(str(e))
        return 1


def main(argv: list[str] | None = None) -> int:
    console.quiet_libraries()  # a torchrun worker: `tune run` passed its choice on in the environment
    args = parse_args(argv)
    command = ["python", "-m", "tunecli.train", *(argv if argv is not None else sys.argv[1:])]
    return train(args.config, args.overrides, no_resume=args.no_resume, overwrite=args.overwrite,
                 break_lock=args.break_lock, config_sha256=args.config_sha256, command=command)


def _without_start_flags(command: list[str]) -> list[str]:
    """The command to type again: no start flags, no hash (the file may have been accepted anew since)."""
    out: list[str] = []
    args = iter(command)
    for arg in args:
        if arg == CONFIG_SHA256_FLAG:
            next(args, None)  # and its value
        elif arg not in START_FLAGS and not arg.startswith(CONFIG_SHA256_FLAG + "="):
            out.append(arg)
    return out


def resume_hint(default: str) -> str:
    # `tune run` names its own command here, so an interrupted torchrun job says `tune run NAME.sh`.
    return os.environ.get("TUNECLI_RESUME_HINT") or default


def report_status(code: int) -> int:
    """Tell a supervising ``tune run`` how the trainer ended; returns the code this process exits with.

    Under torchrun a worker's nonzero exit is a failure: torchrun prints a ChildFailedError report.
    So a torchrun job that stopped on request (130) writes 130 to the status file and exits 0,
    which lets torchrun shut down normally and ``tune run`` report 130 itself.
    """
    path = os.environ.get("TUNECLI_STATUS_FILE")
    if not path:
        return code
    if os.environ.get("RANK", "0") == "0":
        with open(path, "w") as f:
            json.dump({"exit_code": code}, f)
    if code == EXIT_INTERRUPTED and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 0
    return code


def exit_worker(code: int) -> None:
    """Leave a torchrun worker without interpreter teardown.

    Everything is flushed and the process group is destroyed by then, but gloo's C++ threads can
    still be unwound during teardown, which aborts the process (SIGABRT, "terminate called without
    an active exception") and turns a finished run into a failed one.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_worker(report_status(main()))
