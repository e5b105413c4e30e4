"""`tune run NAME.sh|NAME.yaml [-- section.key=value ...]`: check a recipe, then launch its trainer."""

from __future__ import annotations

import os
import shlex

import typer
from rich.markup import escape

from tunecli import console
from tunecli.errors import EXIT_INTERRUPTED, TuneError
from tunecli.train import BREAK_LOCK_HELP, NO_RESUME_HELP, OVERWRITE_HELP

EPILOG = (
    "Examples:  tune run generated/quickstart.sh  ·  tune run generated/quickstart.sh --dry-run  ·  "
    "tune run generated/quickstart.sh -- trainer.total_training_steps=5 actor.lr=1e-5  ·  "
    "tune run generated/quickstart.yaml --no-resume"
)


def register(app: typer.Typer) -> None:
    @app.command("run", epilog=EPILOG)
    def run(
        recipe: str = typer.Argument(..., help="NAME.sh written by `tune new` (or its NAME.yaml)."),
        overrides: list[str] = typer.Argument(None, help="section.key=value overrides after `--`, e.g. -- rollout.n=8"),
        dry_run: bool = typer.Option(False, "--dry-run", help="Check everything and print the command lines; run nothing."),
        trust: bool = typer.Option(False, "--trust", help="Run a script that is not exactly what tunecli writes, as it is (with bash)."),
        no_resume: bool = typer.Option(False, "--no-resume", help=NO_RESUME_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
        break_lock: bool = typer.Option(False, "--break-lock", help=BREAK_LOCK_HELP),
        follow: bool = typer.Option(False, "--follow", help="SLURM: after submitting, print the job's progress lines until it ends."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' warnings and progress bars too."),
    ) -> None:
        """Check the recipe (script and YAML, every `tune new` check, hardware) and run its trainer; Ctrl-C stops after a checkpoint."""
        console.quiet_libraries(verbose)
        from tunecli.launch import plan as planning
        from tunecli.launch.runner import run_child

        overrides = overrides or []
        try:
            target = planning.resolve_target(recipe, trust=trust, overrides=overrides)
            for w in target.warnings:
                console.warning(w)
            if not _checks_pass(target, dry_run=dry_run):
                raise typer.Exit(1)
            launch = planning.plan(target, overrides, no_resume=no_resume, overwrite=overwrite, break_lock=break_lock)
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None

        for n in launch.notes:
            console.info(n)
        if follow and not target.slurm:
            console.warning("--follow is for SLURM recipes: this one runs here, in the foreground, printing its progress.")
        lines = launch.lines()
        if dry_run:
            console.info("Would run:")
            console.out.print(lines[0], markup=False, soft_wrap=True)
            if target.recipe is not None and target.recipe.launch.nnodes > 1 and not target.slurm:
                console.info(f"(on each of the {target.recipe.launch.nnodes} machines)")
            raise typer.Exit(0)

        console.info(f"[bold]tune run[/bold] {escape(shlex.quote(recipe))}: {escape(lines[-1])}")

        def on_interrupt(count: int) -> None:
            if count == 1:
                console.warning("Ctrl-C: stopping after the trainer writes its checkpoint (Ctrl-C again: quit without saving).")
            elif count == 2:
                console.warning("Ctrl-C again: the trainer quits without saving (a third Ctrl-C kills every process).")
            else:
                console.warning("Killing the run and all its processes.")

        if target.slurm:
            with planning.submitted(launch) as command:
                raise typer.Exit(_submit(command, launch.env, target, follow))

        torchrun = target.recipe is not None and target.recipe.launch.world_size > 1 and not target.slurm
        with planning.submitted(launch) as command:
            outcome = run_child(command, launch.env, on_interrupt=on_interrupt,
                                worker_module="tunecli.train" if torchrun else None)
        code = outcome.returncode
        if outcome.interrupted and code != 0:
            _report_interrupt(target, launch.env["TUNECLI_RESUME_HINT"])
            if code == 1 and torchrun:
                # Ctrl-C before torchrun started its workers: torchrun itself stopped, with code 1.
                code = EXIT_INTERRUPTED
        raise typer.Exit(code)


def _checks_pass(target, *, dry_run: bool = False) -> bool:
    """Every `tune new` check on the recipe as it will run (overrides applied) and the hardware check, all
    reported (warnings, then each refusal as its own paragraph). Nothing to check for a trusted script
    without a YAML. A dry run prepares a job for other machines (a cluster job on a laptop): there a
    hardware mismatch is a warning, and the plan is still printed."""
    from tunecli.authoring.checks import check_recipe
    from tunecli.launch import hardware

    if target.recipe is None:
        return True
    report = check_recipe(target.recipe)
    errors = list(report.errors)
    if not target.slurm:  # a SLURM job runs on other machines than this login node
        try:
            machine = hardware.check_hardware(target.recipe, hardware.detect_machine())
            report.warnings.extend(machine.warnings)
            for n in machine.notes:
                console.info(n)
        except TuneError as e:
            if not dry_run:
                errors.append(e)
            else:
                report.warnings.append(f"{e} (A real run on this machine refuses; --dry-run prints the plan anyway.)")
    for w in report.warnings:
        console.warning(w)
    for e in errors:
        console.error(str(e))
    return not errors


def _report_interrupt(target, again: str) -> None:
    """Where the run stopped and the command (`again`, with its overrides) that resumes it."""
    if target.recipe is None:
        return
    from tunecli.config.paths import latest_checkpoint, run_dir

    ckpt = latest_checkpoint(run_dir(target.recipe))
    if ckpt is not None:
        console.info(escape(f"Stopped. Latest checkpoint: {ckpt}. Run {again} again to resume from it."))
    else:
        console.info(escape(f"Stopped before any checkpoint was written; {again} starts from the beginning."))


def _submit(command: list[str], env: dict[str, str], target, follow: bool) -> int:
    """sbatch the job; print its id and log, and with ``follow`` its progress until it ends."""
    from tunecli.cli.status import show_status
    from tunecli.launch import slurm
    from tunecli.launch.runner import STATUS_FILE_ENV

    name = target.recipe.name if target.recipe is not None else target.path.stem
    job_env = {**os.environ, **env}
    job_env.pop(STATUS_FILE_ENV, None)  # the job outlives `tune run`: nothing may point at its temp files
    try:
        job = slurm.submit(command, job_env, name)
    except TuneError as e:
        console.error(str(e))
        return 1
    console.info(escape(f"Submitted SLURM job {job.job_id}. Log: {job.log}"))
    if not follow:
        console.info(escape(f"Follow it with `tune status {name}` (from this directory) or `tune status {job.job_id}`."))
        return 0
    return show_status(job.job_id, name, follow=True)
