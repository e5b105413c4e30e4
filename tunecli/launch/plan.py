"""From ``tune run PATH [-- overrides]`` to the exact command lines: verify the files, build the commands.

A rendered NAME.sh carries a header whose hash covers its body and the bytes of its NAME.yaml
(``config.header``); ``integrity.verify_script`` checks it and that the body is what tunecli writes
for that YAML. Once verified, `tune run` starts the trainer command itself (the command the script
ends in, built by ``trainer_command``) rather than handing the file to bash, and passes the YAML's
sha256 to every trainer process (``--config-sha256``), which re-reads the YAML once and refuses other
bytes: nothing swapped after the check runs. A verified SLURM script is submitted from a private copy
of the checked bytes (``submitted``). A script that tunecli did not write as it stands is executed
only with ``--trust``, as it is.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tunecli.errors import TuneError
from tunecli.config.header import read_script_header
from tunecli.config.io import RecipeFile, read_recipe_file
from tunecli.config.schema import Recipe
from tunecli.launch.integrity import ScriptNotTrusted, VerifiedScript, read_script, verify_script
from tunecli.train import CONFIG_SHA256_FLAG

# torchrun waits this long for workers to finish their checkpoint after Ctrl-C (its default, 30 s,
# is shorter than saving a large model's optimizer state).
SHUTDOWN_TIMEOUT_S = 900
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class RunTarget:
    """What ``tune run`` was pointed at, once checked."""

    path: Path  # as given
    script: Path | None  # a script given to run; None: run the YAML directly
    yaml: RecipeFile | None  # the recipe YAML's checked bytes (None for a trusted script: bash reads what it reads)
    recipe: Recipe | None  # with the command-line overrides applied
    verified: VerifiedScript | None  # a script that is exactly what tunecli writes for its YAML
    warnings: list[str] = field(default_factory=list)

    @property
    def slurm(self) -> bool:
        return self.recipe is not None and self.recipe.launch.launcher == "slurm" and self.script is not None


def _yaml_target(path: Path, overrides: list[str]) -> RunTarget:
    """A YAML runs directly; with a rendered script beside it that names it, the pair must still verify."""
    warnings: list[str] = []
    sibling = path.with_suffix(".sh")
    header = read_script_header(sibling) if sibling.is_file() else None
    if header is None or header.yaml != path.name:
        yaml_file = read_recipe_file(path)
    elif not header.current:
        warnings.append(f"{sibling.name} has the header of tunecli {header.version}, which hashed only the YAML: "
                        f"{path.name} is not checked against it.")
        yaml_file = read_recipe_file(path)
    else:
        try:
            yaml_file = verify_script(sibling).yaml
        except ScriptNotTrusted as e:
            raise TuneError(
                f"Refusing to run {path}: {sibling} beside it holds the hash that vouches for it, but "
                f"{e.difference or f'{sibling.name} is not what tunecli writes'}, so whether {path.name} changed "
                f"since it was checked cannot be told. Undo the edit to the script, or re-render both files with "
                f"`tune new ... --force`; if you trust the script as it is, run `tune run --trust {sibling}`.",
                field="recipe",
            ) from None
    return RunTarget(path, None, yaml_file, yaml_file.recipe(overrides), None, _with_empty(warnings, yaml_file))


def _trusted_target(path: Path, overrides: list[str]) -> RunTarget:
    header = read_script_header(path)
    yaml_path = path.parent / header.yaml if header is not None else path.with_suffix(".yaml")
    warnings = [f"Running {path} because you trust it: tunecli did not check what it does."]
    recipe = read_recipe_file(yaml_path).recipe(overrides) if yaml_path.is_file() else None
    if recipe is None:
        warnings.append(f"No {yaml_path.name} next to {path.name}: recipe and hardware checks are skipped for this trusted script.")
    return RunTarget(path, path, None, recipe, None, warnings)


def _with_empty(warnings: list[str], yaml_file: RecipeFile) -> list[str]:
    empty = yaml_file.empty_warning()
    return [*warnings, empty] if empty else warnings


def resolve_target(path: str | Path, *, trust: bool = False, overrides: list[str] | None = None) -> RunTarget:
    """Check the script/YAML pair and load the recipe with overrides; a TuneError explains any refusal."""
    path = Path(path)
    overrides = list(overrides or [])
    if not path.exists():
        raise TuneError(f"'{path}' does not exist. Pass a recipe written by `tune new`: generated/NAME.sh (or its NAME.yaml).", field="recipe")
    if path.is_dir():
        raise TuneError(f"'{path}' is a directory. Pass a recipe file: NAME.sh or NAME.yaml.", field="recipe")
    if path.suffix in YAML_SUFFIXES:
        return _yaml_target(path, overrides)
    try:
        verified = verify_script(path, read_script(path))
    except ScriptNotTrusted:
        if not trust:
            raise
        return _trusted_target(path, overrides)
    launch_overrides = [o for o in overrides if o.lstrip("+").startswith("launch.")]
    if launch_overrides:
        yaml_path = verified.yaml.path
        raise TuneError(
            f"{', '.join(launch_overrides)}: {path.name} fixes the processes and nodes when it is rendered, so "
            "launch.* overrides would not reach torchrun. Change them in the YAML and accept the edit with "
            f"`tune validate --fix-hash {yaml_path}`, or run the YAML directly: `tune run {yaml_path} -- ...`.",
            field=launch_overrides[0].split("=")[0],
        )
    recipe = verified.yaml.recipe(overrides)
    return RunTarget(path, path, verified.yaml, recipe, verified, _with_empty([], verified.yaml))


def trainer_command(recipe: Recipe, yaml_path: Path, args: list[str]) -> list[str]:
    """The command one node runs: the trainer directly for one process, torchrun for more.

    What ``templates/launch.sh.j2`` ends in (a test holds them together), with this interpreter instead
    of whatever ``tune``/``torchrun`` the PATH finds first.
    """
    python = sys.executable
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
    env: dict[str, str]  # added to the environment
    notes: list[str]
    submit: bytes | None = None  # sbatch gets a private copy of these checked bytes instead of command[1]

    def lines(self) -> list[str]:
        return [shlex.join(self.command)]


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
    if target.script is not None and target.verified is None:  # trusted: run as it is
        if target.slurm:
            return LaunchPlan(["sbatch", str(target.script), *args], env, _sbatch_notes())
        return LaunchPlan(["bash", str(target.script), *args], env, notes)
    assert recipe is not None and target.yaml is not None
    checked = [CONFIG_SHA256_FLAG, target.yaml.sha256, *args]
    if target.slurm:
        assert target.verified is not None
        notes = [*_sbatch_notes(), f"sbatch is given a private copy of the checked {target.path.name}, not the file itself."]
        return LaunchPlan(["sbatch", str(target.script), *checked], env, notes, submit=target.verified.data)
    if target.verified is not None:
        notes.append(f"{target.path} matches what tunecli writes for {target.yaml.path.name}, so `tune run` starts its "
                     "trainer command itself, with the sha256 of the checked YAML.")
    return LaunchPlan(trainer_command(recipe, Path(os.path.abspath(target.yaml.path)), checked), env, notes)


def _sbatch_notes() -> list[str]:
    if shutil.which("sbatch") is None:
        return ["sbatch is not on this machine's PATH: submit the script from a SLURM login node."]
    return []


@contextmanager
def submitted(launch: LaunchPlan) -> Iterator[list[str]]:
    """The command to start: for a checked SLURM script, sbatch reads a private copy of the checked bytes
    (a temporary directory only this user can enter), so the file cannot change between check and submit."""
    if launch.submit is None:
        yield launch.command
        return
    with tempfile.TemporaryDirectory(prefix="tunecli-sbatch-") as private:
        copy = Path(private) / Path(launch.command[1]).name
        copy.write_bytes(launch.submit)
        copy.chmod(0o700)
        yield [launch.command[0], str(copy), *launch.command[2:]]
