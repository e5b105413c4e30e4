"""From ``tune run PATH [-- overrides]`` to the exact command lines: verify the files, build the commands.

A rendered NAME.sh carries a header tying it to the bytes of its NAME.yaml:

    # tunecli-recipe: version=0.1.0 yaml-sha256=<hex> yaml=NAME.yaml

A script without it was not written by tunecli and is only executed with ``--trust``; a YAML whose
hash no longer matches was edited after the wizard checked it, and is refused until
``tune validate --fix-hash`` re-checks and accepts it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunecli import __version__
from tunecli.errors import TuneError
from tunecli.authoring.render import render_yaml
from tunecli.config.header import HEADER_PREFIX, read_script_header, yaml_hash
from tunecli.config.io import dump_recipe, load_recipe
from tunecli.config.keys import changed_leaves
from tunecli.config.paths import latest_checkpoint, run_dir
from tunecli.config.schema import Recipe

# torchrun waits this long for workers to finish their checkpoint after Ctrl-C (its default, 30 s,
# is shorter than saving a large model's optimizer state).
SHUTDOWN_TIMEOUT_S = 900
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class RunTarget:
    """What ``tune run`` was pointed at, once checked."""

    path: Path  # as given
    script: Path | None  # the script to execute; None: run the YAML directly
    yaml: Path | None  # the recipe YAML (None only for a trusted foreign script with no YAML next to it)
    recipe: Recipe | None  # with the command-line overrides applied
    header: dict[str, str] | None  # the script's tunecli header; None for a YAML or a foreign script
    warnings: list[str] = field(default_factory=list)

    @property
    def slurm(self) -> bool:
        return self.recipe is not None and self.recipe.launch.launcher == "slurm" and self.script is not None


def value_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every leaf that differs between two recipe dicts."""
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed_leaves(before, after).items()]


def _last_run_config(yaml_path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The config saved with the latest checkpoint of this recipe's run, if one exists under the cwd."""
    try:
        recipe = load_recipe(yaml_path)
    except TuneError:
        return None
    ckpt = latest_checkpoint(run_dir(recipe))
    if ckpt is None:
        return None
    try:
        return ckpt, yaml.safe_load((ckpt / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def hash_mismatch_error(script: Path, yaml_path: Path, expected: str, actual: str) -> TuneError:
    """Refusal for a YAML edited after rendering: what is known about the change, and how to accept it."""
    details = [f"{yaml_path} changed after `tune new` wrote {script} (sha256 {expected[:12]}… in the script's header, {actual[:12]}… now)"]
    try:
        load_recipe(yaml_path)
    except TuneError as e:
        details.append(f"it no longer validates: {e}")
    else:
        last = _last_run_config(yaml_path)
        if last is not None:
            ckpt, saved = last
            current = dump_recipe(load_recipe(yaml_path))
            changes = value_changes(saved, current)
            if changes:
                details.append(f"compared with the config of the last checkpoint ({ckpt}): " + "; ".join(changes))
            else:
                details.append(f"its values are the same as in the last checkpoint ({ckpt}); only comments or layout changed")
        else:
            text_now = render_yaml(load_recipe(yaml_path))
            if text_now == yaml_path.read_text():
                details.append("its values changed (the header keeps only a hash, not the old values: `git diff` shows them if the file is tracked)")
            else:
                details.append("its values, comments or layout changed (`git diff` shows what, if the file is tracked)")
    return TuneError(
        "Refusing to run: " + "; ".join(details) + ". Hand edits skip the checks `tune new` ran (batch "
        f"divisibility, memory). If the edit is intended, check and accept it with `tune validate --fix-hash "
        f"{yaml_path}`, then run again; otherwise re-render the recipe with `tune new`.",
        field="yaml-sha256",
    )


def resolve_target(path: str | Path, *, trust: bool = False, overrides: list[str] | None = None) -> RunTarget:
    """Check the script/YAML pair and load the recipe with overrides; a TuneError explains any refusal."""
    path = Path(path)
    overrides = list(overrides or [])
    if not path.exists():
        raise TuneError(f"'{path}' does not exist. Pass a recipe written by `tune new`: generated/NAME.sh (or its NAME.yaml).", field="recipe")
    if path.is_dir():
        raise TuneError(f"'{path}' is a directory. Pass a recipe file: NAME.sh or NAME.yaml.", field="recipe")
    warnings: list[str] = []

    if path.suffix in YAML_SUFFIXES:
        # A YAML with a rendered script next to it must still match that script's header.
        sibling = path.with_suffix(".sh")
        header = read_script_header(sibling) if sibling.is_file() else None
        if header is not None and Path(header.get("yaml", path.name)).name == path.name:
            actual = yaml_hash(path)
            if actual != header["yaml_sha256"]:
                raise hash_mismatch_error(sibling, path, header["yaml_sha256"], actual)
        return RunTarget(path, None, path, load_recipe(path, overrides), None, warnings)

    header = read_script_header(path)
    if header is None:
        if not trust:
            raise TuneError(
                f"'{path}' was not written by tunecli: it has no '{HEADER_PREFIX}' header line, so "
                "`tune run` will not execute it. Read it first; if you trust it, run it with `tune run --trust "
                f"{path}`, or write a checked recipe with `tune new`.",
                field="recipe",
            )
        yaml_path = path.with_suffix(".yaml")
        recipe = load_recipe(yaml_path, overrides) if yaml_path.is_file() else None
        if recipe is None:
            warnings.append(f"No {yaml_path.name} next to {path.name}: hardware checks are skipped for this trusted script.")
        return RunTarget(path, path, yaml_path if recipe else None, recipe, None, warnings)

    yaml_path = path.parent / header.get("yaml", path.with_suffix(".yaml").name)
    if not yaml_path.is_file():
        raise TuneError(
            f"{path} runs {yaml_path}, which does not exist. Keep NAME.sh and NAME.yaml together in one "
            "folder, or re-render both with `tune new`.",
            field="recipe",
        )
    actual = yaml_hash(yaml_path)
    if actual != header["yaml_sha256"]:
        raise hash_mismatch_error(path, yaml_path, header["yaml_sha256"], actual)
    if header.get("version") != __version__:
        warnings.append(f"{path.name} was written by tunecli {header.get('version')}; this is tunecli {__version__}.")
    recipe = load_recipe(yaml_path, overrides)
    launch_overrides = [o for o in overrides if o.lstrip("+").startswith("launch.")]
    if launch_overrides:
        raise TuneError(
            f"{', '.join(launch_overrides)}: {path.name} fixes the processes and nodes when it is rendered, so "
            "launch.* overrides would not reach torchrun. Change them in the YAML and accept the edit with "
            f"`tune validate --fix-hash {yaml_path}`, or run the YAML directly: `tune run {yaml_path} -- ...`.",
            field=launch_overrides[0].split("=")[0],
        )
    return RunTarget(path, path, yaml_path, recipe, header, warnings)


def trainer_command(recipe: Recipe, yaml_path: Path, args: list[str], *, python: str | None = None) -> list[str]:
    """The command one node runs: the trainer directly for one process, torchrun for more.

    Mirrors ``templates/launch.sh.j2`` (a test holds them together), with this interpreter instead of
    whatever ``tune``/``torchrun`` the PATH finds first.
    """
    python = python or sys.executable
    launch = recipe.launch
    config = ["--config", str(yaml_path)]
    if launch.world_size == 1:
        return [python, "-m", "tunecli.train", *config, *args]
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(launch.n_gpus_per_node), "--nnodes", str(launch.nnodes)]
    if launch.nnodes == 1:
        cmd.append("--standalone")  # a free local port: two runs on one machine never collide on 29500
    else:
        endpoint = os.environ.get("TUNE_RDZV_ENDPOINT") or launch.rdzv_endpoint
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
    return [*cmd, "-m", "tunecli.train", *config, *args]


@dataclass
class LaunchPlan:
    command: list[str]  # what tune run starts
    runs: list[str] | None  # for a script: the trainer command it ends in (None when unknown)
    env: dict[str, str]  # added to the environment
    notes: list[str]

    def lines(self) -> list[str]:
        out = [shlex.join(self.command)]
        if self.runs is not None:
            out.append(shlex.join(self.runs))
        return out


def plan(
    target: RunTarget, overrides: list[str], *, no_resume: bool = False, overwrite: bool = False, break_lock: bool = False
) -> LaunchPlan:
    flags = {"--no-resume": no_resume, "--overwrite": overwrite, "--break-lock": break_lock}
    args = [*(flag for flag, on in flags.items() if on), *overrides]
    recipe = target.recipe
    # What an interrupted trainer tells the user to type (without --no-resume: resuming is the point).
    hint = "`" + shlex.join(["tune", "run", str(target.path), *(["--", *overrides] if overrides else [])]) + "`"
    env = {"TUNECLI_RESUME_HINT": hint, "PYTHONUNBUFFERED": "1"}
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    notes: list[str] = []
    if target.script is None:
        assert recipe is not None and target.yaml is not None
        return LaunchPlan(trainer_command(recipe, target.yaml, args), None, env, notes)
    if target.slurm:
        if shutil.which("sbatch") is None:
            notes.append("sbatch is not on this machine's PATH: submit the script from a SLURM login node.")
        return LaunchPlan(["sbatch", str(target.script), *args], None, env, notes)
    runs = None
    if target.header is not None and recipe is not None and target.yaml is not None:
        # The rendered script ends in exactly this command (with `tune`/`torchrun` from its PATH).
        runs = trainer_command(recipe, Path(os.path.abspath(target.yaml)), args, python="python")
        runs = _as_script_runs(runs)
    return LaunchPlan(["bash", str(target.script), *args], runs, env, notes)


def _as_script_runs(cmd: list[str]) -> list[str]:
    """trainer_command with the script's spelling: `tune train` / `torchrun` instead of python -m."""
    if cmd[1:3] == ["-m", "tunecli.train"]:
        return ["tune", "train", *cmd[3:]]
    return ["torchrun", *cmd[3:]]
