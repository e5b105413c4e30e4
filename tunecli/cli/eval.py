"""`tune eval TARGET`: held-out accuracy of a run, checkpoint, export or model (`--baseline`: vs its base)."""

from __future__ import annotations

import json

import typer

from tunecli import console
from tunecli.errors import TuneError

EPILOG = (
    "Examples:  tune eval runs/quickstart --baseline  ·  tune eval runs/quickstart/export/merged --config "
    "generated/quickstart.yaml  ·  tune eval smollm2-135m --config generated/quickstart.yaml --samples 4 --json"
)


def register(app: typer.Typer) -> None:
    @app.command("eval", epilog=EPILOG)
    def eval_(
        target: str = typer.Argument(..., help="Run directory (its latest checkpoint), checkpoint, exported or HF model directory, catalogue model or hub id."),
        config: str = typer.Option(None, "--config", "-c", help="Recipe NAME.yaml: its held-out split and reward (default: a run's own)."),
        data: str = typer.Option(None, "--data", help="Held-out rows instead: a .jsonl/.parquet file or a generated dataset (arithmetic, ...)."),
        reward: str = typer.Option(None, "--reward", help="Reward instead of the recipe's: a built-in name or path/to/file.py:function."),
        samples: int = typer.Option(1, "--samples", "-k", min=1, help="Also sample K answers per question: pass@K and mean@K."),
        baseline: bool = typer.Option(False, "--baseline", help="Score the base model on the same questions and print the difference."),
        engine: str = typer.Option(None, "--engine", help="vllm or hf (default: the recipe's; hf when vLLM is missing)."),
        limit: int = typer.Option(None, "--limit", min=1, help="At most this many held-out questions."),
        as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' warnings and progress bars too."),
    ) -> None:
        """Score a model on held-out questions with the trainer's own validation (greedy accuracy; --samples K: pass@K, mean@K)."""
        console.quiet_libraries(verbose)
        try:
            from tunecli.trainer import evaluation  # torch: only when evaluating

            if engine is not None and engine not in evaluation.ENGINES:
                raise TuneError(f"--engine = '{engine}': not an engine. Fix: use vllm or hf.", field="--engine")
            found = evaluation.resolve_target(target, config)
            if found.checkpoint is None and config is None and data is None:
                raise TuneError(f"TARGET = '{target}' carries no recipe, so there are no held-out questions. Fix: "
                                "pass --config NAME.yaml (its held-out split) or --data FILE.jsonl.", field="--config")
            found.recipe = evaluation.with_inputs(found.recipe, data=data, reward=reward, limit=limit, engine=engine)
            examples = evaluation.held_out_examples(found.recipe, data)
            results = evaluation.evaluate(found, examples, samples, baseline=baseline)
        except TuneError as e:
            console.error(str(e))
            raise typer.Exit(1) from None
        rows = [r.as_dict() for r in results]
        if as_json:
            console.out.print_json(json.dumps({"results": rows, "difference": _difference(rows)}))
            return
        _print_table(rows, found.recipe.rollout.name)


def _difference(rows: list[dict]) -> dict | None:
    if len(rows) < 2:
        return None
    base, trained = rows
    return {k: round(trained[k] - base[k], 6) for k in trained if k not in ("model", "questions")}


def _print_table(rows: list[dict], engine: str) -> None:
    metrics = [k for k in rows[0] if k not in ("model", "questions", "greedy_reward")]
    percent = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    table_rows = [[r["model"], str(r["questions"]), *(percent(r[k]) for k in metrics), f"{r['greedy_reward']:.3f}"] for r in rows]
    diff = _difference(rows)
    if diff:
        table_rows.append(["difference", "", *(f"{100 * diff[k]:+.1f}" for k in metrics), f"{diff['greedy_reward']:+.3f}"])
    names = {"greedy_acc": "greedy accuracy"}
    console.table(f"Held-out evaluation ({engine} engine)", ["model", "questions", *(names.get(k, k) for k in metrics), "greedy reward"], table_rows)
    if diff:
        base, trained = rows
        console.info(f"held-out greedy accuracy: {percent(base['greedy_acc'])} (base) -> {percent(trained['greedy_acc'])} "
                     f"(trained), {100 * diff['greedy_acc']:+.1f} points on {trained['questions']} questions")
