"""`tune new`: the wizard, or the same answers from flags / an answers file / a verl script."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from tunecli import console
from tunecli.errors import TuneError

if TYPE_CHECKING:  # the authoring modules load inside the command, so `tune --help` stays fast
    from tunecli.authoring.checks import Report
    from tunecli.authoring.defaults import Choices
    from tunecli.authoring.new import Checked, NewRequest
    from tunecli.authoring.render import Rendered
    from tunecli.config.schema import Recipe

EPILOG = (
    "Examples:\n\n"
    "  tune new                                   # the wizard\n\n"
    "  tune new --preset quickstart --yes         # CPU, no download\n\n"
    "  tune new --model qwen2.5-7b --gpu-type h100 --gpus 2 --yes\n\n"
    "  tune new --preset quickstart --set actor.lr=5e-5 --dry-run\n\n"
    "  tune new --from-verl run_qwen2-7b.sh --yes"
)


def _preview(recipe: Recipe, report: Report) -> None:
    """Summary + memory estimate + check results."""
    rows = [
        ["name", recipe.name],
        ["model", f"{recipe.model.path} ({recipe.model.method}"
                  + (f", r={recipe.model.lora_rank}, alpha={recipe.model.lora_alpha})" if recipe.model.method == "lora" else ")")],
        ["algorithm", f"{recipe.algorithm.name}, lr {recipe.actor.lr:g}, KL {recipe.actor.kl_loss_coef if recipe.actor.use_kl_loss else 'off'}"],
        ["data", f"{recipe.data.dataset}, {recipe.data.train_batch_size} prompts x n={recipe.rollout.n}, "
                 f"lengths {recipe.data.max_prompt_length}+{recipe.data.max_response_length}"],
        ["reward", recipe.reward.function],
        ["rollout", f"{recipe.rollout.name}, TP {recipe.rollout.tensor_model_parallel_size}, "
                    f"gpu_memory_utilization {recipe.rollout.gpu_memory_utilization}"],
        ["launch", f"{recipe.launch.nnodes} node(s) x {recipe.launch.n_gpus_per_node} {recipe.launch.hardware}, "
                   f"{recipe.launch.strategy}, {recipe.launch.launcher}"],
    ]
    if report.memory is not None:
        rows += [[k, v] for k, v in report.memory.rows()]
    from rich.table import Table

    table = Table(title="Recipe summary (memory estimate per device)", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for r in rows:
        table.add_row(*(escape(str(x)) for x in r))
    console.out.print(table)
    for w in report.warnings:
        console.warning(w)
    for e in report.errors:
        console.error(str(e))


def _import_verl(script: Path, env: list[str]) -> Choices:
    """The script's choices; what it sets that has no meaning here is shown as a table."""
    from rich.table import Table

    from tunecli.importers.verl.script import import_verl_script, parse_env

    result = import_verl_script(script, parse_env(env))
    if result.unmapped:
        table = Table(title=f"Not mapped from {script.name} ({len(result.unmapped)} overrides)", show_lines=True,
                      header_style="bold")
        table.add_column("line", justify="right")
        table.add_column("override", overflow="fold", ratio=3)
        table.add_column("why it has no meaning here / what tunecli does", overflow="fold", ratio=2)
        for u in result.unmapped:
            table.add_row(str(u.line), escape(f"{u.key}={u.value}"), escape(u.reason))
        console.out.print(table)
    for note in result.notes:
        console.info(escape(note))
    return result.choices


def _ask_until_checked(choices: Choices, *, ask_start: bool) -> Checked:
    from tunecli.authoring.checks import check_recipe
    from tunecli.authoring.new import build_checked
    from tunecli.authoring.wizard import Cancelled, run_wizard

    def preview(recipe: Recipe) -> bool:
        report = check_recipe(recipe)
        _preview(recipe, report)
        return report.ok

    try:
        return build_checked(run_wizard(choices, preview=preview, ask_start=ask_start))
    except Cancelled:
        raise TuneError("Cancelled: nothing was written.", field=None) from None


def _confirm_write(rendered: Rendered, out: Path, *, force: bool) -> None:
    from tunecli.authoring.new import existing_paths, recipe_paths
    from tunecli.authoring.wizard import Cancelled, confirm_write

    try:
        confirmed = confirm_write(recipe_paths(rendered, out), existing_paths(rendered, out), force=force)
    except Cancelled:
        confirmed = False
    if not confirmed:
        raise TuneError("Cancelled: nothing was written.")


def _print_dry_run(rendered: Rendered, out: Path) -> None:
    from tunecli.authoring.new import recipe_paths

    yaml_path, sh_path = recipe_paths(rendered, out)
    sys.stdout.write(f"# ---- {yaml_path} ----\n{rendered.yaml_text}")
    sys.stdout.write(f"# ---- {sh_path} ----\n{rendered.script_text}")
    console.info("Dry run: nothing was written.")


def _print_written(name: str, out: Path, yaml_path: Path, sh_path: Path, *, slurm: bool = False) -> None:
    from rich.tree import Tree

    tree = Tree(f"[bold]{escape(str(out))}/[/bold]")
    tree.add(f"{yaml_path.name}  [dim](config: every field, commented)[/dim]")
    tree.add(f"{sh_path.name}  [dim](launch script)[/dim]")
    console.out.print(tree)
    shown = shlex.quote(str(sh_path))
    if slurm:
        console.success(escape(f"Recipe {name} written. Submit it:  tune run {shown}   (or: sbatch {shown})"))
        return
    console.success(escape(f"Recipe {name} written. Run it:  bash {shown}   (or: tune run {shown})"))


def register(app: typer.Typer) -> None:
    @app.command("new", epilog=EPILOG)
    def new(
        preset: str | None = typer.Option(None, "--preset", metavar="NAME", help="Start from a preset (tune list presets)."),
        model: str | None = typer.Option(None, "--model", metavar="MODEL", help="Catalogue model, local HF dir or hub id."),
        model_size: str | None = typer.Option(None, "--model-size", metavar="SIZE",
                                              help="Model size such as 8B, when its config.json cannot be read here."),
        algorithm: str | None = typer.Option(None, "--algorithm", metavar="ALGO", help="grpo, dapo, gspo ... (`tune list algorithms` shows all)."),
        method: str | None = typer.Option(None, "--method", metavar="METHOD", help="lora or full."),
        gpus: str | None = typer.Option(None, "--gpus", metavar="N", help="GPUs (or CPU processes) per node."),
        gpu_type: str | None = typer.Option(None, "--gpu-type", metavar="GPU", help="cpu, h100, h800, h200, h20, a100-80g ..."),
        nodes: str | None = typer.Option(None, "--nodes", metavar="N", help="Number of machines."),
        strategy: str | None = typer.Option(None, "--strategy", metavar="STRATEGY", help="fsdp2 or none (one process)."),
        engine: str | None = typer.Option(None, "--engine", metavar="ENGINE", help="Rollout engine: vllm or hf."),
        dataset: str | None = typer.Option(None, "--dataset", metavar="DATASET", help="arithmetic, countdown, gsm8k or a file."),
        reward: str | None = typer.Option(None, "--reward", metavar="REWARD", help="Built-in reward or file.py:function."),
        name: str | None = typer.Option(None, "--name", metavar="NAME", help="Recipe name (default: the naming rule)."),
        out: Path | None = typer.Option(None, "--out", metavar="DIR",
                                        help="Output folder (default: the answers file's out, else generated)."),
        sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Any config field: section.key=value (repeat)."),
        answers: Path | None = typer.Option(None, "--answers", metavar="FILE.yaml", help="YAML file with the answers."),
        launcher: str | None = typer.Option(None, "--launcher", metavar="local|slurm", help="local (torchrun) or slurm (sbatch)."),
        from_verl: Path | None = typer.Option(None, "--from-verl", metavar="SCRIPT.sh", help="Import a verl launch script."),
        env: list[str] = typer.Option([], "--env", metavar="NAME=VALUE",
                                      help="With --from-verl: a variable the script reads from its environment or "
                                           "its arguments (1=VALUE for $1); repeat."),
        yes: bool = typer.Option(False, "--yes", "-y", help="No prompts: use flags and defaults."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print both files, write nothing."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    ) -> None:
        """Write a recipe: NAME.yaml (commented config) + NAME.sh (launch script)."""
        from tunecli.authoring.defaults import Choices
        from tunecli.authoring.new import NewRequest

        request = NewRequest(
            flags=Choices(preset=preset, model=model, algorithm=algorithm, method=method, gpus=gpus, gpu_type=gpu_type,
                          nodes=nodes, strategy=strategy, engine=engine, dataset=dataset, reward=reward, name=name,
                          launcher=launcher, model_size=model_size, sets=list(sets)),
            out=out, answers=answers, from_verl=from_verl, env=list(env), interactive=not yes, dry_run=dry_run, force=force,
        )
        try:
            _new(request)
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None


def _new(request: NewRequest) -> None:
    from tunecli.authoring.new import build_checked, refuse_bad_request, render_checked, resolve_choices, write_recipe

    refuse_bad_request(request, has_terminal=sys.stdin.isatty() and sys.stdout.isatty())
    imported = _import_verl(request.from_verl, request.env) if request.from_verl is not None else None
    choices, out = resolve_choices(request, imported)
    if request.interactive:
        checked = _ask_until_checked(choices, ask_start=request.from_verl is None)
    else:
        checked = build_checked(choices)
        _preview(checked.recipe, checked.report)
    rendered = render_checked(checked, out)
    if request.dry_run:
        _print_dry_run(rendered, out)
        return
    if request.interactive:
        _confirm_write(rendered, out, force=request.force)
    yaml_path, sh_path = write_recipe(rendered, out, overwrite=request.force or request.interactive)
    _print_written(rendered.name, out, yaml_path, sh_path, slurm=checked.recipe.launch.launcher == "slurm")
