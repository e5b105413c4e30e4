"""The GRPO trainer, readable top to bottom: ``setup`` -> ``train`` (``train_step`` each step) -> ``cleanup``.

One step: sample ``rollout.n`` completions per prompt, score them, turn the rewards into advantages
(``_advantages``), update the policy with the algorithm's loss (``_policy_loss``; both from the registry
in ``tunecli.algorithms``) and hand the new weights to the engine (``_sync_engine``). The forward
passes live in ``passes.py``, the weight stream in ``weights.py``.

Ranks: every rank runs this same code (``distributed.py``). A step's prompts are split into whole
groups per rank, losses are normalised by global counts, and FSDP2 averages gradients, so N ranks
compute the same update as one process over the whole batch.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import torch

from tunecli import console
from tunecli.algorithms import get_algorithm
from tunecli.algorithms.advantages import compute_advantages, nonzero_variance_groups
from tunecli.algorithms.losses import carries_gradient, policy_loss
from tunecli.config.io import dump_recipe
from tunecli.config.rules import batch_problems
from tunecli.config.schema import Recipe
from tunecli.errors import EXIT_INTERRUPTED, TuneError
from tunecli.trainer import checkpoint, distributed, guards, heap, rundir
from tunecli.trainer.batching import MiniBatch, micro_batches, mini_batch_chunks, minibatch_indices, pad_rows, plan_mini_batch
from tunecli.trainer.data import PromptSample, PromptSampler, load_splits, render_prompts
from tunecli.trainer.evaluation import greedy_sampling, render_settings, score_held_out
from tunecli.trainer.metrics import GIB, MetricsLogger, PeakMemory, UpdateAverages, now
from tunecli.trainer.passes import PassSettings, choose_pass
from tunecli.trainer.policy import load_policy
from tunecli.trainer.precision import resolve_compute_dtype
from tunecli.trainer.rollout import EngineSettings, Rollout, SamplingSettings, make_engine
from tunecli.trainer.schedule import adamw, lr_lambda
from tunecli.trainer.scoring import accuracy_counts, completion_rows, recipe_rewards, score_rollout
from tunecli.trainer.stopping import StopRules
from tunecli.trainer.trackers import check_available, open_trackers
from tunecli.trainer.weights import weight_stream

# What policy_loss reports, and how a step averages it (``UpdateAverages``): the loss terms are each
# micro-batch's share of its mini-batch's loss, so they add up per optimizer step; the token
# fractions are one value per micro-batch.
LOSS_SHARES = {"pg_loss": "actor/pg_loss", "kl": "actor/kl", "entropy": "actor/entropy"}
TOKEN_FRACTIONS = {"clip_frac": "actor/clip_frac", "dual_clip_frac": "actor/dual_clip_frac"}


class Trainer:
    def __init__(
        self, recipe: Recipe, *, resume: bool | None = None, overwrite: bool = False, break_lock: bool = False,
        resume_hint: str | None = None,
    ):
        self.recipe = recipe
        self.algorithm = get_algorithm(recipe.algorithm.name)
        # --overwrite starts over too: it deletes the old run instead of moving it aside.
        self.resume = False if overwrite else (recipe.trainer.resume if resume is None else resume)
        self.overwrite, self.break_lock = overwrite, break_lock
        self.resume_hint = resume_hint or "the same `tune train` command (or `tune run NAME.sh`)"
        self.step = 0
        self.engine = self.lock = None
        self.stop = StopRules(recipe.trainer.max_minutes, recipe.trainer.total_training_minutes)  # the time budgets start now

    # =========================================================================================
    # setup
    # =========================================================================================
    @heap.start_up()  # no full collections over the start-up's long-lived objects
    def setup(self) -> None:
        cfg = self.recipe
        self.dist = distributed.init(cfg.trainer.device)
        if cfg.trainer.num_threads:
            torch.set_num_threads(cfg.trainer.num_threads)
        self._check_batch_sizes()  # before anything slow: a bad batch size fails in a second
        self.compute = resolve_compute_dtype(cfg.actor.compute_dtype, self.dist.device, distributed.all_reduce_sum)
        check_available(cfg.trainer.logger)  # likewise a tracker whose library is missing
        torch.manual_seed(cfg.trainer.seed)  # same LoRA init on every rank
        random.seed(cfg.trainer.seed + self.dist.rank)
        # Locked (and cleared, when starting over) before anything slow: a busy or unwritable run
        # directory fails in a second, and two runs never write one directory at once.
        self.run_dir, self.lock = rundir.claim(cfg, resume=self.resume, overwrite=self.overwrite, break_lock=self.break_lock)
        self.memory = PeakMemory().start()
        self.rewards = recipe_rewards(cfg.reward)
        self.splits = load_splits(cfg.data, cfg.trainer.seed)  # data errors before the slow model load
        self._setup_model()
        self._setup_data()
        self._setup_optimizer()
        settings = EngineSettings.from_recipe(cfg, self.policy.model_path)
        self.engine = make_engine(settings, self.policy.model, self.tokenizer)
        self._resume_or_start()
        t = cfg.trainer
        trackers = open_trackers(t.logger, t.project_name, t.experiment_name, self.run_dir, dump_recipe(cfg)) if distributed.is_main() else []
        self.logger = MetricsLogger(self.run_dir, self.total_steps, self.step, distributed.is_main(), trackers, console="console" in t.logger)
        self.stop.install_signal_handlers()
        if cfg.actor.compute_dtype == "auto":
            self._print(f"compute dtype {self.compute.dtype} (auto: {self.compute.reason})")

    def _check_batch_sizes(self) -> None:
        problems = batch_problems(self.recipe, self.dist.world_size)
        if problems:
            raise TuneError(" ".join(str(p) for p in problems), field=problems[0].field)

    def _setup_model(self) -> None:
        cfg = self.recipe
        self.policy = load_policy(cfg, self.dist.device, with_reference=cfg.actor.use_kl_loss)
        self.policy.model = distributed.wrap_policy(self.policy.model, cfg)
        if self.policy.frozen_reference is not None:
            self.policy.frozen_reference = distributed.wrap_reference(self.policy.frozen_reference, cfg)
        self.tokenizer = self.policy.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        settings = PassSettings(self.dist.device, self.pad_id, cfg.rollout.temperature, bf16=self.compute.dtype == "bfloat16")
        self.forward_pass = choose_pass(self.policy.model, settings, gradient_checkpointing=cfg.model.enable_gradient_checkpointing)

    def _setup_data(self) -> None:
        cfg, data = self.recipe, self.recipe.data
        train, val = self.splits
        render = render_settings(cfg, self.tokenizer)  # `tune eval` renders held-out prompts the same way
        self.train_samples = render_prompts(train, split="train", **render)
        self.val_samples = render_prompts(val, split="held-out", **render)
        self.sampler = PromptSampler(self.train_samples, data.train_batch_size, cfg.trainer.seed, data.shuffle)
        t = cfg.trainer
        self.total_steps = t.total_training_steps or t.total_epochs * self.sampler.steps_per_epoch

    def _setup_optimizer(self) -> None:
        actor = self.recipe.actor
        self.optimizer = adamw(self.policy.trainable_parameters(), lr=actor.lr, weight_decay=actor.weight_decay)
        self.schedule_steps = self.total_steps  # the LR schedule's length (a time budget may end the run sooner)
        lr_factor = lr_lambda(actor.lr_warmup_steps, self.schedule_steps, actor.lr_scheduler_type, self.stop.run_progress)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)

    def _resume_or_start(self) -> None:
        config = dump_recipe(self.recipe)
        checkpoint.remove_stale(self.run_dir)
        if not self.resume:  # rundir.claim moved the old run aside
            return
        resumed = checkpoint.resume(self.run_dir, self.policy.model, self.optimizer, config, self.schedule_steps)
        if resumed is None:
            return
        latest, state = resumed
        self.step, self.stop.elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        self.sampler.load_state_dict(state["sampler"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._sync_engine()  # the engine started from model.path, not from the checkpoint
        self._print(f"Resumed from {latest} (step {self.step}/{self.total_steps}).")

    # =========================================================================================
    # train
    # =========================================================================================
    def train(self) -> int:
        """Run to ``total_steps``; returns the exit code (0, or 130 when interrupted)."""
        cfg = self.recipe.trainer
        with self.logger:
            if self.step == 0 and cfg.val_before_train:
                self.validate()
            while self.step < self.total_steps:
                if (budget := self.stop.out_of_time()) is not None:
                    self._print(f"{budget} reached after {self.step} steps.")
                    self.total_steps = self.step
                    break
                data_position, rng = self.sampler.state_dict(), checkpoint.rng_state()
                metrics = self.train_step()
                if metrics is None:  # interrupted before the update: the step never happened
                    self.sampler.load_state_dict(data_position)
                    checkpoint.set_rng_state(rng)
                    break
                self.step += 1
                self.stop.step_done(metrics["timing/step_s"])
                self.logger.log(self.step, metrics)
                self.logger.log_completions(self.step, self.completions)
                last = self.step == self.total_steps
                if cfg.test_freq > 0 and self.step % cfg.test_freq == 0 and not last:
                    self.validate()
                if cfg.save_freq > 0 and self.step % cfg.save_freq == 0 and not last:
                    self.save_checkpoint()
                if self.stop.should_stop():
                    break
            if self.step < self.total_steps:  # interrupted
                where = self.save_checkpoint()
                self._print(
                    f"[yellow]Interrupted at step {self.step}/{self.total_steps}.[/yellow] Checkpoint: {where}\n"
                    f"Resume with {self.resume_hint}; it continues from step {self.step}."
                )
                return EXIT_INTERRUPTED
            self.validate()
            self.save_checkpoint()
        peak_gib = distributed.all_reduce_sum(self.memory.peak) / GIB  # a collective: every rank
        self.logger.write_summary(self.recipe.name, self.run_dir, peak_gib=peak_gib, steps=self.step)
        return 0

    def train_step(self) -> dict[str, float] | None:
        """Rollout -> rewards -> advantages -> policy update -> weight sync. None when a stop was requested before the update."""
        cfg = self.recipe
        t_start = now()
        chunks = mini_batch_chunks(cfg.data.train_batch_size, cfg.actor.ppo_mini_batch_size, self.dist.world_size)
        prompts = distributed.shard_groups(self.sampler.next_batch(), 1, chunks=chunks)
        rollout = self._generate(prompts, self._train_sampling())
        scores = self._score(prompts, rollout)  # None: a stop request abandoned a reward call
        t_rollout = now() - t_start
        if self.stop.should_stop():
            return None
        rewards = scores.total  # [N], the weighted sum of the reward functions
        advantages, active, varied = self._advantages(rewards, rollout)  # [N], [N], [B_local]
        self.completions = completion_rows(scores, prompts, rollout, advantages, cfg.trainer.log_completions)

        t_train = now()
        lr = self.scheduler.get_last_lr()[0]  # the rate this step's updates use
        with self.policy.cast_for_compute(self.compute.dtype):
            update = self._update(rollout, advantages, active)
        t_sync = now()
        if update["actor/updates"]:  # no optimizer step (nothing carried a gradient): the engine holds these weights
            self._sync_engine()  # the next rollout samples from the updated policy
        with warnings.catch_warnings():  # torch warns when a step took no optimizer step; the LR still follows training steps
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        t_end = now()

        metrics = {
            "reward/mean": rewards.mean().item(),
            "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
            "reward/acc": (rewards >= 1.0).float().mean().item(),
            **scores.metrics(),  # reward/NAME per function, timing/reward_s
            "groups/zero_variance_frac": 1.0 - varied.float().mean().item(),
            "response/length": sum(len(r) for r in rollout.response_ids) / len(rollout),
            "response/truncated_frac": 1.0 - sum(rollout.finished) / len(rollout),
            "actor/lr": lr,
            **update,
            "timing/rollout_s": t_rollout,
            "timing/train_s": t_end - t_train,  # the update and the weight sync
            "timing/sync_s": t_end - t_sync,
            "timing/step_s": t_end - t_start,
            "perf/tokens_per_s": rollout.num_generated_tokens / max(t_rollout, 1e-9),
        }
        metrics = distributed.all_reduce_mean(metrics)
        self.memory.sample()
        metrics["memory/peak_rss_gib"] = distributed.all_reduce_sum(self.memory.peak) / GIB
        return metrics

    # -- rollout, reward, advantages, weight sync -----------------------------------------------
    def _train_sampling(self) -> SamplingSettings:
        r = self.recipe.rollout
        # A seed per (run seed, step, rank): a resumed run draws exactly what the uninterrupted one drew.
        seed = (self.recipe.trainer.seed * 1_000_003 + self.step * 7919 + self.dist.rank) % 2**31
        return SamplingSettings(
            n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
            max_new_tokens=self.recipe.data.max_response_length, seed=seed,
            logprobs=r.use_rollout_logprobs,  # otherwise the trainer computes its own
        )

    def _generate(self, prompts: list[PromptSample], sampling: SamplingSettings) -> Rollout:
        self.engine.wake_up()
        rollout = self.engine.generate([p.token_ids for p in prompts], sampling)
        self.engine.sleep()  # give the engine's memory back before the training passes
        return rollout

    def _score(self, prompts: list[PromptSample], rollout: Rollout):
        """``scoring.Scores``; None when a stop request abandoned it (``scoring.score_rollout``)."""
        return score_rollout(self.rewards, self.tokenizer, prompts, rollout, self.recipe.reward.truncated_score, self.stop)

    def _advantages(self, rewards: torch.Tensor, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advantage per sample [N], which samples train [N] (bool), which groups' rewards differ [B]."""
        algorithm, n = self.recipe.algorithm, rollout.group_size
        varied = nonzero_variance_groups(rewards, n)  # [B]
        # A tied group has advantage 0 everywhere; algorithm.filter_groups (DAPO's default) leaves it out.
        active = varied.repeat_interleave(n) if algorithm.filter_groups else torch.ones(len(rollout), dtype=torch.bool)  # [N]
        lengths = torch.tensor([len(r) for r in rollout.response_ids], dtype=torch.float32) * active  # [N]
        advantages = compute_advantages(
            self.algorithm.advantage, rewards, n, lengths=lengths, norm_by_std=algorithm.norm_adv_by_std_in_grpo,
            all_reduce=distributed.all_reduce_sum_tensor,
        )  # [N]
        guards.check_finite(self.step + 1, {"advantage": advantages})  # a collective: every rank stops together
        return advantages, active, varied

    def _sync_engine(self) -> None:
        """Hand the policy's weights to the engine in the format it asks for (none: it samples from the
        live policy). Every rank calls it: FSDP2 gathers each tensor, in the same order on every rank."""
        weight_format = self.engine.weight_format
        if weight_format is not None:
            self.engine.update_weights(weight_stream(self.policy.model, weight_format))

    # -- the policy update -----------------------------------------------------------------------
    def _update(self, rollout: Rollout, advantages: torch.Tensor, active: torch.Tensor) -> dict[str, float]:
        """ppo_epochs x mini-batches of whole groups; each mini-batch is one optimizer step.

        Loss normalisation: each micro-batch's loss is its share of the mini-batch loss over *all
        ranks* (``normalizer`` = global token or sequence count). FSDP2 averages gradients over ranks,
        so each rank multiplies its share by world_size: the averaged gradient is then exactly the
        gradient of the global loss, and a 2-rank run takes the same step as a 1-rank run.
        Samples whose loss has no gradient (advantage 0, no KL or entropy term) still count in the
        normaliser but are not run on one process (``batching.samples_to_run``): the same update, cheaper.
        """
        actor = self.recipe.actor
        per_mini = actor.ppo_mini_batch_size * rollout.group_size // self.dist.world_size  # samples per rank
        trained = active & carries_gradient(
            advantages, kl_in_loss=actor.use_kl_loss and actor.kl_loss_coef != 0, entropy_in_loss=actor.entropy_coeff != 0
        )  # [N]
        # A mini-batch where nothing carries a gradient takes no optimizer step: Adam's momentum alone
        # would still move the weights (and a tied step carries no information about where to).
        planned = [plan_mini_batch(rollout.response_ids, mb, active, trained, actor.loss_agg_mode, self.dist.world_size,
                                   distributed.all_reduce_sum_tensor) for mb in minibatch_indices(len(rollout), per_mini)]
        minibatches = [mb for mb in planned if mb is not None]
        on_policy = actor.ppo_epochs == 1 and len(minibatches) <= 1  # the policy has not moved before its pass
        need_old = not on_policy or self.recipe.rollout.use_rollout_logprobs
        old_logp, ref_logp = self._reference_passes(rollout, [i for mb in minibatches for i in mb.run], need_old=need_old)

        averages = UpdateAverages()
        for _epoch in range(actor.ppo_epochs):
            for mb in minibatches:
                self.optimizer.zero_grad(set_to_none=True)
                losses = [self._loss_backward(rollout, micro, advantages, active, old_logp, ref_logp, mb, averages)
                          for micro in self._micro_batches(rollout, mb.run)]
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), actor.grad_clip)
                grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                guards.check_finite(self.step + 1, {"loss": losses, "gradient norm": grad_norm})  # before the weights change
                averages.add_per_update({"actor/grad_norm": float(grad_norm)})
                self.optimizer.step()
                averages.end_update()
        self.optimizer.zero_grad(set_to_none=True)
        trained_n, samples = distributed.all_reduce_sum_tensor(torch.tensor([float(trained.sum()), float(len(trained))])).tolist()
        return {**averages.means(), "actor/updates": float(averages.updates), "actor/trained_frac": trained_n / samples}

    def _micro_batches(self, rollout: Rollout, indices: list[int]) -> list[list[int]]:
        # In the order the forward pass runs fastest; the loss is a sum, so the order does not change the math.
        ordered = self.forward_pass.micro_batch_order(rollout, indices)
        return micro_batches(ordered, rollout, self.recipe.actor)

    @torch.no_grad()
    def _reference_passes(self, rollout: Rollout, indices: list[int], need_old: bool):
        """Per-sample log-probs of the old policy and of the reference, before any update.

        Old log-probs come from the *policy*, not the engine: a vLLM engine samples in bf16 with other
        kernels, and its log-probs differ from the trainer's enough to make the ratio != 1 on-policy
        (spurious clipping). ``rollout.use_rollout_logprobs`` opts into the engine's values. With one
        update per step (ppo_epochs 1, one mini-batch) the policy's own detached log-probs are the old
        ones, so no pass is needed at all.
        """
        cfg = self.recipe
        old: dict[int, torch.Tensor] | None = None
        if need_old and cfg.rollout.use_rollout_logprobs and rollout.logprobs is not None:
            old = {i: torch.tensor(rollout.logprobs[i]) for i in indices}
            need_old = False
        elif need_old:
            old = {}
        ref: dict[int, torch.Tensor] | None = {} if cfg.actor.use_kl_loss else None
        if not need_old and ref is None:
            return old, None
        for micro in self._micro_batches(rollout, indices):
            if need_old:
                scores = self.forward_pass(self.policy.model, rollout, micro, entropy=False)
                old.update({i: scores.logp[row, : int(scores.mask[row].sum())].detach() for row, i in enumerate(micro)})
            if ref is not None:
                with self.policy.reference() as ref_model:
                    scores = self.forward_pass(ref_model, rollout, micro, entropy=False)
                ref.update({i: scores.logp[row, : int(scores.mask[row].sum())] for row, i in enumerate(micro)})
        return old, ref

    def _loss_backward(self, rollout, micro, advantages, active, old_logp, ref_logp, mb: MiniBatch, averages) -> torch.Tensor:
        """Backward of one micro-batch's share of the mini-batch loss (returned); its statistics into ``averages``."""
        world = self.dist.world_size
        entropy_grad = self.recipe.actor.entropy_coeff > 0
        scores = self.forward_pass(self.policy.model, rollout, micro, entropy=True, entropy_grad=entropy_grad)
        logp = scores.logp  # [m, R]
        mask = scores.mask * active[micro].unsqueeze(-1).to(scores.mask.dtype)  # [m, R]  filtered groups count nothing
        old = logp.detach() if old_logp is None else pad_rows([old_logp[i] for i in micro], logp)  # [m, R]
        ref = None if ref_logp is None else pad_rows([ref_logp[i] for i in micro], logp)  # [m, R]
        loss, stats = self._policy_loss(logp, old, ref, advantages[micro], mask, scores.entropy, mb.normalizer)
        (loss * world).backward()  # x world: FSDP2's gradient average becomes the global sum (see _update)
        # The loss is a share of the whole mini-batch; entropy and KL are reported over the samples run.
        rescale = mb.normalizer / mb.ran if mb.ran else 1.0
        over_run = {"pg_loss": 1.0, "kl": rescale, "entropy": rescale}
        averages.add_per_update({name: float(stats[key]) * world * over_run[key] for key, name in LOSS_SHARES.items() if key in stats})
        averages.add_per_micro_batch({name: float(stats[key]) for key, name in TOKEN_FRACTIONS.items() if key in stats})
        return loss.detach()

    def _policy_loss(self, logp, old_logp, ref_logp, advantages, mask, entropy, normalizer):
        """This micro-batch's share of the mini-batch loss (a scalar) and its statistics (``LOSS_SHARES``,
        ``TOKEN_FRACTIONS``). logp, old_logp, ref_logp | None, mask, entropy: [m, R]; advantages: [m]."""
        actor = self.recipe.actor
        return policy_loss(
            logp, old_logp, advantages, mask, loss_mode=self.algorithm.policy_loss,
            clip_low=actor.clip_ratio_low, clip_high=actor.clip_ratio_high, clip_ratio_c=actor.clip_ratio_c,
            loss_agg_mode=actor.loss_agg_mode, max_response_length=self.recipe.data.max_response_length,
            ref_logp=ref_logp, kl_coef=actor.kl_loss_coef if actor.use_kl_loss else 0.0, kl_type=actor.kl_loss_type,
            entropy=entropy, entropy_coeff=actor.entropy_coeff, normalizer=normalizer,
        )

    # =========================================================================================
    # validate, checkpoint, summary
    # =========================================================================================
    def validate(self) -> dict[str, float]:
        """Greedy accuracy on the held-out prompts (a sample counts when its reward is >= 1)."""
        t0 = now()
        prompts = self.val_samples[self.dist.rank :: self.dist.world_size]
        # The one scoring path `tune eval` shares: its numbers for a checkpoint are these.
        scores = score_held_out(self.engine, self.tokenizer, prompts, greedy_sampling(self.recipe.data.max_response_length),
                                self.rewards, self.recipe.reward.truncated_score, self.stop) if prompts else None
        counts = accuracy_counts(scores, empty=not prompts)  # [4]
        correct, total, reward_sum, abandoned = distributed.all_reduce_sum_tensor(counts).tolist()  # one collective
        if abandoned:  # a stop request abandoned a reward call: no accuracy from part of the prompts
            return {}
        metrics = {"val/acc": correct / max(total, 1), "val/reward": reward_sum / max(total, 1), "timing/val_s": now() - t0}
        self.stop.last_validation_s = metrics["timing/val_s"]
        self.logger.log(self.step, metrics, show=False)
        self._print(f"validation @ step {self.step}: held-out accuracy {metrics['val/acc']:.3f} ({int(correct)}/{int(total)}), {metrics['timing/val_s']:.1f}s")
        return metrics

    def save_checkpoint(self) -> Path:
        state = {"step": self.step, "sampler": self.sampler.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "schedule_steps": self.schedule_steps, "elapsed_s": self.stop.run_elapsed()}
        return checkpoint.save(self.run_dir, self.step, self.policy.model, self.optimizer, state, dump_recipe(self.recipe))

    def _print(self, text) -> None:
        if distributed.is_main():
            logger = getattr(self, "logger", None)  # none yet while resuming
            if logger is not None:
                logger.print(text)
            else:
                console.out.print(text)

    # =========================================================================================
    # cleanup
    # =========================================================================================
    def cleanup(self) -> None:
        if self.engine is not None:
            self.engine.close()
        heap.release()  # setup froze its objects (heap.start_up); they go back to the collector
        if getattr(self, "memory", None):
            self.memory.stop()
        if self.lock is not None:
            self.lock.release()
        distributed.shutdown()


def run_training(
    recipe: Recipe, *, resume: bool | None = None, overwrite: bool = False, break_lock: bool = False,
    resume_hint: str | None = None,
) -> int:
    """setup -> train -> cleanup; returns the process exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = Trainer(recipe, resume=resume, overwrite=overwrite, break_lock=break_lock, resume_hint=resume_hint)
    try:
        trainer.setup()
        code = trainer.train()
        # Ranks leave together: a rank that tears its process group down while another still talks
        # to it (rank 0 writes the summary) is how gloo aborts at exit.
        distributed.barrier()
        return code
    finally:
        trainer.cleanup()
