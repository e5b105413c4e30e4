"""`tune new`: the wizard, or the same answers from flags / an answers file / a verl script."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from rich.markup import escape

from tunecli import console
from tunecli.errors import TuneError, did_you_mean

EPILOG = (
    "Examples:\n\n"
    "  tune new                                   # the wizard\n\n"
    "  tune new --preset quickstart --yes         # CPU, no download\n\n"
    "  tune new --model qwen2.5-7b --gpu-type h100 --gpus 2 --yes\n\n"
    "  tune new --preset quickstart --set actor.lr=5e-5 --dry-run\n\n"
    "  tune new --from-verl run_qwen2-7b.sh --yes"
)


def _load_answers(path: Path) -> dict[str, Any]:
    import yaml

    from tunecli.authoring.defaults import Choices

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise TuneError(f"--answers '{path}' cannot be read ({e.strerror}). Give the path of a YAML file.", field="--answers") from None
    except yaml.YAMLError as e:
        raise TuneError(f"--answers '{path}' is not valid YAML ({e}). Fix the syntax.", field="--answers") from None
    if not isinstance(data, dict):
        raise TuneError(f"--answers '{path}' must be a mapping such as 'preset: quickstart', not a {type(data).__name__}.", field="--answers")
    keys = [k for k in Choices.keys() if k != "sets"] + ["set", "out"]
    out: dict[str, Any] = {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        if k not in keys:
            raise TuneError(f"--answers '{path}': unknown key '{key}'{did_you_mean(k, keys)}. Valid keys: {', '.join(keys)}.",
                            field="--answers")
        if k == "set":
            if isinstance(value, dict):
                value = [f"{kk}={_yaml_inline(vv)}" for kk, vv in value.items()]
            elif isinstance(value, str):
                value = [value]
            k = "sets"
        out[k] = value
    return out


def _yaml_inline(value: Any) -> str:
    from tunecli.authoring.render import yaml_value

    return value if isinstance(value, str) else yaml_value(value)


def _preview(recipe, report) -> None:
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


def _from_verl(script: Path) -> tuple[Any, list[str]]:
    from tunecli.importers.verl.importer import import_verl_script

    result = import_verl_script(script)
    if result.unmapped:
        from rich.table import Table

        table = Table(title=f"Not mapped from {script.name} ({len(result.unmapped)} overrides)", show_lines=True,
                      header_style="bold")
        table.add_column("line", justify="right")
        table.add_column("override", overflow="fold", ratio=3)
        table.add_column("why it has no meaning here / what tunecli does", overflow="fold", ratio=2)
        for u in result.unmapped:
            table.add_row(str(u.line), escape(f"{u.key}={u.value}"), escape(u.reason))
        console.out.print(table)
    return result.choices, result.notes


def register(app: typer.Typer) -> None:
    @app.command("new", epilog=EPILOG)
    def new(
        preset: str | None = typer.Option(None, "--preset", metavar="NAME", help="Start from a preset (tune list presets)."),
        model: str | None = typer.Option(None, "--model", metavar="MODEL", help="Catalogue model, local HF dir or hub id."),
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
        out: Path = typer.Option(Path("generated"), "--out", metavar="DIR", help="Output folder."),
        sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Any config field: section.key=value (repeat)."),
        answers: Path | None = typer.Option(None, "--answers", metavar="FILE.yaml", help="YAML file with the answers."),
        launcher: str | None = typer.Option(None, "--launcher", metavar="local|slurm", help="local (torchrun) or slurm (sbatch)."),
        from_verl: Path | None = typer.Option(None, "--from-verl", metavar="SCRIPT.sh", help="Import a verl launch script."),
        yes: bool = typer.Option(False, "--yes", "-y", help="No prompts: use flags and defaults."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print both files, write nothing."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    ) -> None:
        """Write a recipe: NAME.yaml (commented config) + NAME.sh (launch script)."""
        try:
            _new(locals())
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None


def _new(opts: dict[str, Any]) -> None:
    from tunecli.authoring.checks import check_recipe
    from tunecli.authoring.defaults import Choices, build_recipe
    from tunecli.authoring.render import render, write_files

    interactive = not opts["yes"]
    if interactive and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise TuneError(
            "tune new needs a terminal for its questions, and this one has none (stdin or stdout is not a TTY). "
            "Pass --yes to use the flags and defaults without prompts, e.g. tune new --preset quickstart --yes.",
            field="--yes",
        )
    if opts["launcher"] not in (None, "local", "slurm"):
        raise TuneError(f"--launcher '{opts['launcher']}' is not a launcher. Use local (torchrun) or slurm (sbatch).",
                        field="--launcher")

    base = Choices()
    out = opts["out"]
    if opts["from_verl"] is not None:
        base, notes = _from_verl(opts["from_verl"])
        for n in notes:
            console.info(escape(n))
    if opts["answers"] is not None:
        loaded = _load_answers(opts["answers"])
        out = Path(loaded.pop("out")) if "out" in loaded and opts["out"] == Path("generated") else out
        base = Choices(**loaded).merged_over(base)
    flags = Choices(
        **{k: opts[k] for k in ("preset", "model", "algorithm", "method", "gpus", "gpu_type", "nodes", "strategy",
                                "engine", "dataset", "reward", "name", "launcher")},
        sets=list(opts["sets"]),
    )
    choices = flags.merged_over(base)

    if interactive:
        from tunecli.authoring.wizard import Cancelled, run_wizard

        def preview(recipe) -> bool:
            report = check_recipe(recipe)
            _preview(recipe, report)
            return report.ok

        try:
            choices = run_wizard(choices, preview=preview, info=console.info, ask_start=opts["from_verl"] is None)
            recipe, preset = build_recipe(choices)
            report = check_recipe(recipe)
        except Cancelled:
            raise TuneError("Cancelled: nothing was written.", field=None) from None
    else:
        recipe, preset = build_recipe(choices)
        report = check_recipe(recipe)
        _preview(recipe, report)
    if not report.ok:
        raise TuneError(f"{len(report.errors)} check(s) failed (above); nothing was written.", field=report.errors[0].field)

    rendered = render(recipe, out_dir=out, preset=preset.name if preset else None)
    if opts["dry_run"]:
        sys.stdout.write(f"# ---- {out / (recipe.name + '.yaml')} ----\n{rendered.yaml_text}")
        sys.stdout.write(f"# ---- {out / (recipe.name + '.sh')} ----\n{rendered.script_text}")
        console.info("Dry run: nothing was written.")
        return
    targets = [out / f"{recipe.name}.yaml", out / f"{recipe.name}.sh"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not opts["force"] and not interactive:
        raise TuneError(f"{' and '.join(existing)} already exist(s). Pass --force to overwrite, or --name NEW_NAME.",
                        field="--name")
    if interactive:
        import questionary

        from tunecli.authoring.wizard import ask

        question = (f"{' and '.join(existing)} exist(s). Overwrite?" if existing and not opts["force"]
                    else f"Write {targets[0]} and {targets[1].name}?")
        try:
            if not ask(questionary.confirm(question, default=not existing or opts["force"])):
                raise TuneError("Cancelled: nothing was written.")
        except Cancelled:
            raise TuneError("Cancelled: nothing was written.") from None
    try:
        yaml_path, sh_path = write_files(rendered, out)
    except OSError as e:
        raise TuneError(f"--out '{out}': cannot write the recipe there ({e.strerror}). Choose a writable folder.",
                        field="--out") from None
    from rich.tree import Tree

    tree = Tree(f"[bold]{escape(str(out))}/[/bold]")
    tree.add(f"{yaml_path.name}  [dim](config: every field, commented)[/dim]")
    tree.add(f"{sh_path.name}  [dim](launch script)[/dim]")
    console.out.print(tree)
    shown = shlex.quote(str(sh_path))
    console.success(escape(f"Recipe {recipe.name} written. Run it:  bash {shown}   (or: tune run {shown})"))
