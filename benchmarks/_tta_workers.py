"""The child processes of `time_to_accuracy.py`: a tunecli run, a TRL run, and the one evaluator.

Both training runs save the LoRA adapter as it stood at fixed wall-clock marks (seconds since the
child started, model loading included): at each step's end, every mark passed during that step gets
the adapter of the step before (the model as it was at the mark). The evaluator loads the base model
once, then pushes each snapshot into one vLLM engine and scores the same held-out questions, greedy
and with K samples, so both trainers are measured by the same code.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunecli.trainer.schedule import lr_lambda

T0 = time.perf_counter()  # the child's clock starts before its heavy imports


def elapsed() -> float:
    return time.perf_counter() - T0


@dataclass
class Spec:
    """What one child does (JSON on the command line)."""

    kind: str  # tunecli | trl | eval
    out: str  # run: snapshot folder; eval: results file
    minutes: float = 10.0
    seed: int = 0
    engine: str = "vllm"  # tunecli's rollout engine (the quickstart or quickstart-hf preset)
    marks: list[float] = field(default_factory=list)  # seconds
    threads: int = 0
    questions: int = 128
    samples: int = 4
    overrides: list[str] = field(default_factory=list)  # tunecli recipe overrides (experiments)
    snapshot_dirs: list[str] = field(default_factory=list)  # eval: the runs to score
    score_marks: list[float] = field(default_factory=list)  # eval: marks scored greedy (empty: all)
    sampled_marks: list[float] = field(default_factory=list)  # eval: marks also scored with `samples` samples
    trl_lr: str = "constant"  # trl: the recipe's peak held | recipe: its schedule (a cosine by the clock, as tunecli's)


# -- the recipe both sides follow ------------------------------------------------------------------
def quickstart_recipe(spec: Spec):
    """The shipped quickstart (or quickstart-hf) with the benchmark's budget, seed and held-out size."""
    from tunecli.catalog import load_catalog
    from tunecli.config.io import recipe_from_dict

    preset = "quickstart" if spec.engine == "vllm" else "quickstart-hf"
    # The budget is the run's length (a cosine LR decays over it); the steps only cap it.
    overrides = [f"trainer.seed={spec.seed}", f"data.val_size={spec.questions}", "trainer.total_training_steps=100000",
                 f"trainer.total_training_minutes={spec.minutes}",
                 "trainer.test_freq=-1", "trainer.save_freq=-1", "trainer.val_before_train=false",
                 "trainer.resume=false", *([f"trainer.num_threads={spec.threads}"] if spec.threads else []), *spec.overrides]
    return recipe_from_dict(load_catalog().preset(preset).recipe, overrides)


# -- snapshots at wall-clock marks -----------------------------------------------------------------
class Snapshots:
    """Saves the adapter as it stood at each mark (``after_step`` at every step's end)."""

    def __init__(self, folder: Path, marks: list[float]):
        self.folder, self.pending = folder, sorted(marks)
        folder.mkdir(parents=True, exist_ok=True)
        self.state: tuple[float, int, dict] | None = None

    def start(self, model, step: int = 0) -> None:
        self.state = (elapsed(), step, _adapter(model))
        self._save_passed(self.state[0], before_start=True)

    def after_step(self, model, step: int) -> None:
        self._save_passed(elapsed())
        self.state = (elapsed(), step, _adapter(model))

    def finish(self, budget_s: float) -> None:
        self._save_passed(budget_s + 1e-6)

    def _save_passed(self, now: float, before_start: bool = False) -> None:
        while self.pending and self.pending[0] < now:
            mark = self.pending.pop(0)
            t, step, lora = self.state
            # A mark before the model was even loaded: the base model is what the user had then.
            torch.save({"mark_s": mark, "state_s": min(t, mark) if before_start else t, "step": step, "lora": lora},
                       self.folder / f"snap-{int(round(mark * 1000)):08d}.pt")  # ms: marks 5 s apart or less


def _adapter(model) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def write_run_info(folder: Path, **info) -> None:
    (folder / "run.json").write_text(json.dumps(info, indent=1))


# -- tunecli ---------------------------------------------------------------------------------------
def tunecli_worker(spec: Spec) -> None:
    from tunecli.trainer.loop import Trainer

    folder = Path(spec.out)
    recipe = quickstart_recipe(spec)
    recipe = recipe.model_copy(update={"trainer": recipe.trainer.model_copy(update={"default_local_dir": str(folder / "run")})})
    trainer = Trainer(recipe, overwrite=True)
    trainer.setup()
    load_s = elapsed()
    snaps = Snapshots(folder, spec.marks)
    snaps.start(trainer.policy.model)
    budget = spec.minutes * 60
    try:
        with trainer.logger:
            while elapsed() < budget:
                metrics = trainer.train_step()
                trainer.step += 1
                trainer.logger.log(trainer.step, metrics)
                snaps.after_step(trainer.policy.model, trainer.step)
        snaps.finish(budget)
    finally:
        trainer.cleanup()
    write_run_info(folder, contender=f"tunecli-{spec.engine}", seed=spec.seed, load_s=load_s, steps=trainer.step,
                   train_s=elapsed() - load_s, settings=_tunecli_settings(recipe, trainer.compute.dtype))


def _tunecli_settings(recipe, compute_dtype: str) -> str:
    a, r, d = recipe.actor, recipe.rollout, recipe.data
    return (f"{r.name} engine ({r.dtype} sampling), compute {compute_dtype} ({a.compute_dtype}), "
            f"lr {a.lr} {a.lr_scheduler_type}, {d.train_batch_size} prompts x {r.n}, "
            f"clip {a.clip_ratio_low}/{a.clip_ratio_high}, loss {a.loss_agg_mode}, kl {a.use_kl_loss}")


# -- TRL -------------------------------------------------------------------------------------------
def lr_setter(lr: float, warmup: int, schedule: str, budget_s: float, clock=time.perf_counter):
    """What TRL's optimizer gets before each step: the quickstart's lr factor (schedule.lr_lambda), a
    cosine following the run's clock as tunecli's does. transformers' schedules follow steps, and how
    many fit the budget is not known."""
    started = clock()
    factor = lr_lambda(warmup, 10**9, schedule, lambda: (clock() - started) / budget_s)

    def set_lr(optimizer, step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr * factor(step)

    return set_lr


def _trl_settings(lr: float, schedule: str) -> str:
    return ("bf16 autocast (faster than fp32 here: compare_trl.py), no gradient checkpointing, transformers generate "
            "(TRL's vLLM mode needs CUDA), torch threads = cores, loss_type bnpo (token-mean), "
            + (f"lr {lr} cosine to the run's end by the clock, as the quickstart (set before each optimizer step)"
               if schedule == "cosine" else f"lr {lr} held constant"))


def trl_worker(spec: Spec) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tunecli.trainer.data import load_splits
    from tunecli.trainer.embedded import embedded_model_dir

    if spec.threads:
        torch.set_num_threads(spec.threads)
    recipe = quickstart_recipe(spec)
    d, a, m = recipe.data, recipe.actor, recipe.model
    assert recipe.reward.function == "arithmetic", "the TRL side scores with the quickstart's reward"
    from tunecli.rewards.builtin import arithmetic

    train, _ = load_splits(d, recipe.trainer.seed)
    rows = [{"prompt": [{"role": "user", "content": ex.prompt}], "ground_truth": ex.ground_truth} for ex in train]
    model_dir = str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    folder, budget = Path(spec.out), spec.minutes * 60

    def reward(prompts, completions, ground_truth, completion_ids, **_):
        # As the quickstart scores: a reply cut at max_response_length earns truncated_score.
        out = []
        for c, ids, gt in zip(completions, completion_ids, ground_truth):
            cut = len(ids) >= d.max_response_length and ids[-1] != tokenizer.eos_token_id
            out.append(float(recipe.reward.truncated_score) if cut else arithmetic("", c[0]["content"], gt))
        return out

    schedule = a.lr_scheduler_type if spec.trl_lr == "recipe" else "constant"
    set_lr = lr_setter(a.lr, a.lr_warmup_steps, schedule, budget)  # the clock starts before the trainer is built

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            self.load_s = elapsed()
            snaps.start(model)

        def on_step_begin(self, args, state, control, optimizer=None, **kw):
            set_lr(optimizer, state.global_step)  # transformers logs its own scheduler's (constant) lr
            lr = optimizer.param_groups[0]["lr"]
            print(f"step {state.global_step + 1}: lr {lr:.3g} at {elapsed():.0f} s", flush=True)

        def on_step_end(self, args, state, control, model=None, **kw):
            snaps.after_step(model, state.global_step)
            control.should_training_stop = elapsed() >= budget

    snaps, clock = Snapshots(folder, spec.marks), Clock()
    args = GRPOConfig(
        output_dir=str(folder / "trl-out"), use_cpu=True, bf16=True, report_to=[], save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=spec.seed, max_steps=100000, per_device_train_batch_size=d.train_batch_size * recipe.rollout.n,
        gradient_accumulation_steps=1, num_generations=recipe.rollout.n, max_completion_length=d.max_response_length,
        temperature=recipe.rollout.temperature, top_p=1.0, learning_rate=a.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=a.weight_decay, max_grad_norm=a.grad_clip, beta=0.0, epsilon=a.clip_ratio_low,
        epsilon_high=a.clip_ratio_high, num_iterations=1, loss_type="bnpo", scale_rewards="group",
        gradient_checkpointing=False, dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"}, log_completions=False,
    )
    peft = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=m.target_modules,
                      task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=peft, callbacks=[clock])
    trainer.train()
    snaps.finish(budget)
    write_run_info(folder, contender="trl", seed=spec.seed, load_s=clock.load_s, steps=trainer.state.global_step,
                   train_s=elapsed() - clock.load_s, settings=_trl_settings(a.lr, schedule))


# -- the evaluator ---------------------------------------------------------------------------------
def eval_worker(spec: Spec) -> None:
    """Score every snapshot of every run with one engine; results appended to spec.out (JSON lines)."""
    from peft import set_peft_model_state_dict

    from tunecli.trainer.data import load_splits, render_prompts
    from tunecli.trainer.evaluation import greedy_sampling, render_settings, score_held_out
    from tunecli.trainer.policy import load_policy
    from tunecli.trainer.rollout import EngineSettings, SamplingSettings, make_engine
    from tunecli.trainer.scoring import recipe_rewards
    from tunecli.trainer.stopping import StopRules
    from tunecli.trainer.weights import weight_stream

    if spec.threads:
        torch.set_num_threads(spec.threads)
    recipe = quickstart_recipe(Spec(kind="eval", out="", seed=0, engine="vllm", questions=spec.questions))
    policy = load_policy(recipe, torch.device("cpu"), with_reference=False)
    engine = make_engine(EngineSettings.from_recipe(recipe, policy.model_path), policy.model, policy.tokenizer)
    prompts = render_prompts(load_splits(recipe.data, recipe.trainer.seed)[1], split="held-out",
                             **render_settings(recipe, policy.tokenizer))
    rewards, stop, d, r = recipe_rewards(recipe.reward), StopRules(None), recipe.data, recipe.rollout
    sampled = SamplingSettings(n=spec.samples, temperature=r.temperature, top_p=r.top_p, max_new_tokens=d.max_response_length,
                               logprobs=False)
    expected = set(_adapter(policy.model))
    out = Path(spec.out)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    done = {(r["run"], r["mark_s"]) for r in rows}
    # Greedy decoding is deterministic: a snapshot of a step already scored has that step's score.
    greedy_of_step = {(r["run"], r["step"]): r["greedy"] for r in rows}

    def score(sampling) -> torch.Tensor:
        return score_held_out(engine, policy.tokenizer, prompts, sampling, rewards, recipe.reward.truncated_score, stop).total

    try:
        for folder in map(Path, spec.snapshot_dirs):
            for snap_path in sorted(folder.glob("snap-*.pt")):
                snap = torch.load(snap_path)
                mark = snap["mark_s"]
                if (str(folder), mark) in done or (spec.score_marks and not _among(mark, spec.score_marks)):
                    continue
                if set(snap["lora"]) != expected:
                    raise SystemExit(f"{snap_path}: adapter tensors differ from the quickstart's LoRA layout")
                key = (str(folder), snap["step"])
                need_sampled = _among(mark, spec.sampled_marks)
                if key not in greedy_of_step or need_sampled:
                    set_peft_model_state_dict(policy.model, snap["lora"])
                    engine.update_weights(weight_stream(policy.model, engine.weight_format))
                if key not in greedy_of_step:
                    greedy_of_step[key] = float((score(greedy_sampling(d.max_response_length)) >= 1.0).float().mean())
                row = {"run": str(folder), "mark_s": mark, "state_s": snap["state_s"], "step": snap["step"],
                       "greedy": greedy_of_step[key]}
                if need_sampled:
                    row[f"mean@{spec.samples}"] = float((score(sampled) >= 1.0).float().mean())
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        engine.close()


def _among(mark: float, marks: list[float]) -> bool:
    return any(abs(mark - m) < 1e-3 for m in marks)


WORKERS = {"tunecli": tunecli_worker, "trl": trl_worker, "eval": eval_worker}


def run_spec(text: str) -> None:
    spec = Spec(**json.loads(text))
    WORKERS[spec.kind](spec)


def spec_json(spec: Spec) -> str:
    return json.dumps(asdict(spec))
