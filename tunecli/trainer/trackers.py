"""Experiment trackers: ``trainer.logger`` (verl's names), each through its own library's client.

``open_trackers`` checks the chosen libraries (``config.trackers.tracker_problems``, the same check as
`tune new`/`tune validate`) and imports each only when chosen. Only the main rank opens any; the
others get none. ``console`` is the live line ``metrics.MetricsLogger`` prints; metrics.jsonl is
always written there too. ``trainer.project_name`` and ``trainer.experiment_name`` name the run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tunecli.config.trackers import tracker_problems
from tunecli.errors import TuneError

COMPLETION_COLUMNS = ("step", "prompt", "completion", "reward", "advantage")
# Each library's own switch for logging to local files only
OFFLINE_SWITCHES = {"wandb": "WANDB_MODE=offline", "swanlab": "SWANLAB_MODE=offline", "mlflow": "MLFLOW_TRACKING_URI=file:PATH"}


class TensorBoardTracker:
    """Event files in runs/NAME/tensorboard (or $TENSORBOARD_DIR, as verl reads it)."""

    def __init__(self, project: str, experiment: str, run_dir: Path, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.environ.get("TENSORBOARD_DIR") or str(run_dir / "tensorboard"))
        self.writer.add_text("recipe", f"{project}/{experiment}", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        """TensorBoard has no tables: a markdown table in the Text tab."""
        lines = ["| " + " | ".join(COMPLETION_COLUMNS) + " |", "|" + "---|" * len(COMPLETION_COLUMNS)]
        lines += ["| " + " | ".join(_cell(row[c]) for c in COMPLETION_COLUMNS) + " |" for row in rows]
        self.writer.add_text("completions", "\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A wandb run in runs/NAME/wandb; WANDB_MODE=offline keeps it on disk (``wandb sync`` later)."""

    def __init__(self, project: str, experiment: str, run_dir: Path, config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=experiment, dir=str(run_dir), config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        table = self.wandb.Table(columns=list(COMPLETION_COLUMNS), data=[[row[c] for c in COMPLETION_COLUMNS] for row in rows])
        self.run.log({"completions": table}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An mlflow run named ``experiment_name`` in experiment ``project_name``, in $MLFLOW_TRACKING_URI, else
    in a file store in runs/NAME/mlruns."""

    def __init__(self, project: str, experiment: str, run_dir: Path, config: dict[str, Any]):
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self.metric = Metric
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a file store needs no database driver (mlflow-skinny has none); mlflow 3 asks for the opt-in
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(project)
        experiment_id = found.experiment_id if found else self.client.create_experiment(project)
        self.run_id = self.client.create_run(experiment_id, run_name=experiment).info.run_id
        self.client.log_dict(self.run_id, config, "recipe.json")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(k, float(v), stamp, step) for k, v in metrics.items()])

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        data = {c: [row[c] for row in rows] for c in COMPLETION_COLUMNS}
        self.client.log_table(self.run_id, data, f"completions/step_{step}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class SwanlabTracker:
    def __init__(self, project: str, experiment: str, run_dir: Path, config: dict[str, Any]):
        import swanlab

        self.swanlab = swanlab
        swanlab.init(project=project, experiment_name=experiment, config=config, logdir=str(run_dir / "swanlog"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.swanlab.log(metrics, step=step)

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        self.swanlab.log({"completions": self.swanlab.Text(_markdown(rows))}, step=step)

    def close(self) -> None:
        self.swanlab.finish()


class TrackioTracker:
    def __init__(self, project: str, experiment: str, run_dir: Path, config: dict[str, Any]):
        import trackio

        self.trackio = trackio
        trackio.init(project=project, name=experiment, config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.trackio.log(metrics, step=step)

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        table = self.trackio.Table(columns=list(COMPLETION_COLUMNS), data=[[row[c] for c in COMPLETION_COLUMNS] for row in rows])
        self.trackio.log({"completions": table}, step=step)

    def close(self) -> None:
        self.trackio.finish()


BACKENDS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker,
            "swanlab": SwanlabTracker, "trackio": TrackioTracker}


def open_trackers(names: list[str], project: str, experiment: str, run_dir: Path, config: dict[str, Any]) -> list[Any]:
    """The chosen trackers, open (main rank only: the caller decides); a missing library is a TuneError."""
    check_available(names)
    return [_open(name, project, experiment, Path(run_dir), config) for name in dict.fromkeys(names) if name in BACKENDS]


def _open(name: str, project: str, experiment: str, run_dir: Path, config: dict[str, Any]) -> Any:
    # A tracker that cannot start (not logged in, no TTY to log in, no network) is one clear error
    # before the first step, not a traceback: swanlab online with no login raises RuntimeError.
    try:
        return BACKENDS[name](project, experiment, run_dir, config)
    except Exception as e:  # noqa: BLE001 - each library raises its own kinds
        offline = OFFLINE_SWITCHES.get(name, "")
        raise TuneError(f"trainer.logger = {name}: {name} could not start ({type(e).__name__}: {e}). Fix: log in "
                        f"to {name}{', or keep it on this disk with ' + offline if offline else ''}, or take {name} "
                        "out of trainer.logger (metrics.jsonl is always written).", field="trainer.logger") from None


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(rows: list[dict[str, Any]]) -> str:
    return "\n".join(" | ".join(_cell(row[c]) for c in COMPLETION_COLUMNS) for row in rows)


def check_available(names: list[str]) -> None:
    """Refuse a chosen tracker whose library is missing, before anything slow starts."""
    problems = tracker_problems(names)
    if problems:
        raise TuneError(" ".join(str(p) for p in problems), field="trainer.logger")
