"""`tune status NAME|JOB_ID [--follow]`: a SLURM job's state and the trainer's last progress line."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from tunecli import console
from tunecli.errors import TuneError

EPILOG = "Examples:  tune status quickstart  ·  tune status generated/quickstart.sh --follow  ·  tune status 1234"


def register(app: typer.Typer) -> None:
    @app.command("status", epilog=EPILOG)
    def status(
        job: str = typer.Argument(..., help="A recipe (NAME, NAME.sh or NAME.yaml) submitted from this directory, or a SLURM job id."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Print each new progress line until the job ends."),
    ) -> None:
        """Show a SLURM job of a recipe: its state, its log and the trainer's latest progress line."""
        from tunecli.launch import slurm

        try:
            if job.isdigit():
                job_id, name = job, None
            else:
                name = Path(job).name.removesuffix(".sh").removesuffix(".yaml").removesuffix(".yml")
                job_id = slurm.latest_job(name, Path.cwd())
                if job_id is None:
                    raise TuneError(
                        f"No SLURM log of recipe '{name}' in {Path.cwd()}: `tune status` looks for the "
                        f"{name}-JOBID.log files its jobs write into the directory they were submitted from. Run it "
                        "there, or pass the job id (`squeue --me` lists them).", field="job")
            raise typer.Exit(show_status(job_id, name, follow=follow))
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None


def show_status(job_id: str, name: str | None, *, follow: bool) -> int:
    """Print the job's state and progress (each new progress line while it runs, with ``follow``).
    Following ends with the job: 0 when it completed, 1 otherwise."""
    from tunecli.launch import slurm

    if follow:
        console.info(f"Following SLURM job {job_id} (Ctrl-C stops following; the job runs on).")
        try:
            final = slurm.follow(job_id, name, lambda line: console.out.print(line, markup=False, soft_wrap=True))
        except KeyboardInterrupt:
            return 0
    else:
        final = slurm.status(job_id, name)
    console.info(escape(f"Job {job_id}: {final.state}. Log: {final.log if final.log else 'unknown'}"))
    if not follow:
        console.out.print(final.progress or "(no progress line in the log yet)", markup=False, soft_wrap=True)
        return 0
    return 0 if final.state == "COMPLETED" else 1
