"""The GRPO trainer, readable top to bottom: ``setup`` -> ``train`` -> ``cleanup``.

One step: take a batch of prompts, sample ``rollout.n`` completions per prompt, score them, turn the
rewards into group advantages, and update the policy with the clipped surrogate (``grpo.py``).

Ranks: every rank runs this same code (``distributed.py``). A step's prompts are split into whole
groups per rank, losses are normalised by global counts, and FSDP2 averages gradients, so N ranks
compute the same update as one process over the whole batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunecli.errors import EXIT_INTERRUPTED, TuneError
from tunecli.rewards import load_reward
from tunecli.config.io import dump_recipe
from tunecli.config import paths
from tunecli.config.rules import batch_problems
from tunecli.config.schema import Recipe
from tunecli.algorithms import grpo
from tunecli.trainer import checkpoint, distributed
from tunecli.trainer.batching import (
    collate, group_members, group_row_length, group_rows, length_buckets, left_pad, pack_by_tokens, pad_rows, right_pad,
)
from tunecli.trainer.data import PromptSample, PromptSampler, load_splits, render_prompts
from tunecli.trainer.logprobs import token_logprobs_and_entropy
from tunecli.trainer.metrics import GIB, MetricsLogger, PeakMemory, now
from tunecli.trainer.policy import EAGER_MAX_TOKENS
from tunecli.trainer.rollout import Rollout, SamplingSettings, make_engine


@dataclass
class LogitChunk:
    """Logits of some rows of a micro-batch, from one forward pass."""

    rows: list[int]  # positions in the micro-batch
    logits: torch.Tensor  # [b, R_b, V]  position t predicts response token t
    targets: torch.Tensor  # [b, R_b]  the response tokens (padding past each end)


class Trainer:
    def __init__(self, recipe: Recipe, *, resume: bool | None = None, resume_hint: str | None = None):
        self.recipe = recipe
        self.resume = recipe.trainer.resume if resume is None else resume
        self.resume_hint = resume_hint or "the same `tune train` command (or `tune run NAME.sh`)"
        self.step = 0
        self._stop_requested = False
        self.engine = None
        self._started = now()  # trainer.max_minutes counts from here (model loading included)
        self._last_val_s = 0.0
        self._step_times: list[float] = []

    # =========================================================================================
    # setup
    # =========================================================================================
    def setup(self) -> None:
        cfg = self.recipe
        self.dist = distributed.init(cfg.trainer.device)
        if cfg.trainer.num_threads:
            torch.set_num_threads(cfg.trainer.num_threads)
        self._check_batch_sizes()  # before anything slow: a bad batch size fails in a second
        torch.manual_seed(cfg.trainer.seed)  # same LoRA init on every rank
        random.seed(cfg.trainer.seed + self.dist.rank)
        self.run_dir = paths.run_dir(cfg)
        self.memory = PeakMemory().start()
        self.reward_fn = load_reward(cfg.reward.function, format_pattern=cfg.reward.format_pattern, **cfg.reward.kwargs)
        self._setup_model()
        self._setup_data()
        self._setup_optimizer()
        self.engine = make_engine(cfg, self.policy.model, self.policy.tokenizer, self.policy.model_path)
        self._resume_or_start()
        self.logger = MetricsLogger(self.run_dir, self.total_steps, self.step, enabled=distributed.is_main())
        self._install_signal_handlers()

    def _check_batch_sizes(self) -> None:
        problems = batch_problems(self.recipe, self.dist.world_size)
        if problems:
            raise TuneError(" ".join(str(p) for p in problems), field=problems[0].field)

    def _setup_model(self) -> None:
        from tunecli.trainer.policy import load_policy

        cfg = self.recipe
        self.policy = load_policy(cfg, self.dist.device, with_reference=cfg.actor.use_kl_loss)
        self.policy.model = distributed.wrap_policy(self.policy.model, cfg)
        if self.policy.frozen_reference is not None:
            self.policy.frozen_reference.to(self.dist.device)
        self.tokenizer = self.policy.tokenizer
        self.pad_id = self.tokenizer.pad_token_id

    def _setup_data(self) -> None:
        cfg, data = self.recipe, self.recipe.data
        train, val = load_splits(data, cfg.trainer.seed)
        render = dict(
            tokenizer=self.tokenizer,
            system_prompt=data.system_prompt,
            max_prompt_length=data.max_prompt_length,
            filter_overlong=data.filter_overlong_prompts,
        )
        self.train_samples = render_prompts(train, split="train", **render)
        self.val_samples = render_prompts(val, split="held-out", **render)
        self.sampler = PromptSampler(self.train_samples, data.train_batch_size, cfg.trainer.seed, data.shuffle)
        t = cfg.trainer
        self.total_steps = t.total_training_steps or t.total_epochs * self.sampler.steps_per_epoch

    def _setup_optimizer(self) -> None:
        actor = self.recipe.actor
        self.optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=actor.lr, weight_decay=actor.weight_decay)
        warmup, total, kind = actor.lr_warmup_steps, self.total_steps, actor.lr_scheduler_type

        def lr_factor(step: int) -> float:  # stepped once per training step, as verl does
            if step < warmup:
                return (step + 1) / warmup
            if kind == "cosine":
                progress = (step - warmup) / max(1, total - warmup)
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
            return 1.0

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)

    def _resume_or_start(self) -> None:
        config = dump_recipe(self.recipe)
        latest = paths.latest_checkpoint(self.run_dir)
        if latest is not None and not self.resume:
            # Starting over: keep the old checkpoints out of the way so a later resume cannot pick them.
            if distributed.is_main():
                previous = self.run_dir / "checkpoints-previous"
                shutil.rmtree(previous, ignore_errors=True)
                paths.checkpoints_dir(self.run_dir).rename(previous)
                self._print(f"Starting over (--no-resume): earlier checkpoints moved to {previous}")
            distributed.barrier()
            return
        if latest is None:
            return
        checkpoint.check_compatible(latest, config)
        state = checkpoint.load(latest, self.policy.model, self.optimizer)
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.engine.sync_weights(self.policy.model)  # the engine started from model.path, not from the checkpoint
        self._print(f"Resumed from {latest} (step {self.step}/{self.total_steps}).")

    def _install_signal_handlers(self) -> None:
        # Every rank catches the signal; they agree on the step to stop at in _should_stop.
        try:
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:  # not the main thread (e.g. a test runner thread): no handler
            pass

    def _on_signal(self, signum, frame) -> None:
        if self._stop_requested:  # second Ctrl-C: leave now, without a checkpoint
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._stop_requested = True
        if distributed.is_main():
            print(
                "\nStopping: the current step is finished or abandoned, then a checkpoint is written. "
                "Press Ctrl-C again to quit without saving.",
                file=sys.stderr,
                flush=True,
            )

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
                if self._out_of_time():
                    self._print(f"Time budget of {cfg.max_minutes} min reached after {self.step} steps.")
                    self.total_steps = self.step
                    break
                before = self._step_start_state()
                metrics = self.train_step()
                if metrics is None:  # interrupted before the update: the step never happened
                    self._restore_step_start_state(before)
                    break
                self.step += 1
                self._step_times.append(metrics["timing/step_s"])
                self.logger.log(self.step, metrics)
                last = self.step == self.total_steps
                if cfg.test_freq > 0 and self.step % cfg.test_freq == 0 and not last:
                    self.validate()
                if cfg.save_freq > 0 and self.step % cfg.save_freq == 0 and not last:
                    self.save_checkpoint()
                if self._should_stop():
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
        self._summarize()
        return 0

    def _out_of_time(self) -> bool:
        """trainer.max_minutes: would the next step plus the final validation overrun the budget?"""
        budget = self.recipe.trainer.max_minutes
        if budget is None or not self._step_times:
            return False
        recent = self._step_times[-5:]
        needed = now() - self._started + sum(recent) / len(recent) + self._last_val_s
        # Every rank must take the same decision: the slowest rank's view wins.
        return distributed.all_reduce_sum(float(needed > budget * 60)) > 0

    def train_step(self) -> dict[str, float] | None:
        """Rollout -> rewards -> advantages -> policy update. None when a stop was requested before the update."""
        cfg = self.recipe
        t_start = now()
        # Whole groups per rank, a share of each mini-batch: the ranks' mini-batches together are
        # exactly one process's, so the optimizer steps match (see distributed.shard_groups).
        num_mini = cfg.data.train_batch_size // cfg.actor.ppo_mini_batch_size
        prompts = distributed.shard_groups(self.sampler.next_batch(), 1, chunks=num_mini)
        rollout = self._generate(prompts, self._train_sampling())
        rewards = self._score(prompts, rollout)  # [N]
        t_rollout = now() - t_start
        if self._should_stop():
            return None

        n = cfg.rollout.n
        estimator = grpo.ALGORITHM_ESTIMATOR[cfg.algorithm.name]
        advantages = grpo.group_advantages(rewards, n, estimator, cfg.algorithm.norm_adv_by_std_in_grpo)  # [N]
        varied = grpo.nonzero_variance_groups(rewards, n)  # [B_local]
        filter_groups = cfg.algorithm.filter_groups or cfg.algorithm.name == "dapo"
        active = varied.repeat_interleave(n) if filter_groups else torch.ones(len(rollout), dtype=torch.bool)  # [N]

        t_train = now()
        lr = self.scheduler.get_last_lr()[0]  # the rate this step's updates use
        with self._training_weights():
            update = self._update(rollout, advantages, active)
        t_sync = now()
        self.engine.sync_weights(self.policy.model)  # the next rollout samples from the updated policy
        self.scheduler.step()
        t_end = now()

        lengths = torch.tensor([len(r) for r in rollout.response_ids], dtype=torch.float32)  # [N]
        metrics = {
            "reward/mean": rewards.mean().item(),
            "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
            "reward/acc": (rewards >= 1.0).float().mean().item(),
            "groups/zero_variance_frac": 1.0 - varied.float().mean().item(),
            "response/length": lengths.mean().item(),
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

    # -- rollout and reward -------------------------------------------------------------------
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

    def _score(self, prompts: list[PromptSample], rollout: Rollout) -> torch.Tensor:
        """Reward per sample, [N]. A reward that raises stops the run with the sample in the message.

        ``reward.truncated_score`` (when set) replaces the reward of responses cut at the length limit:
        an answer cut mid-way is not an answer, and crediting it lets the policy drift into rambling.
        """
        per_prompt = len(rollout) // len(prompts)
        truncated_score = self.recipe.reward.truncated_score
        completions = self.tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
        rewards = []
        for k, completion in enumerate(completions):
            if truncated_score is not None and not rollout.finished[k]:
                rewards.append(truncated_score)
                continue
            ex = prompts[k // per_prompt].example
            rewards.append(self.reward_fn(prompts[k // per_prompt].text, completion, ex.ground_truth, **ex.extra))
        return torch.tensor(rewards, dtype=torch.float32)

    # -- the policy update -----------------------------------------------------------------------
    def _update(self, rollout: Rollout, advantages: torch.Tensor, active: torch.Tensor) -> dict[str, float]:
        """ppo_epochs x mini-batches of whole groups; each mini-batch is one optimizer step.

        Loss normalisation: each micro-batch's loss is its share of the mini-batch loss over *all
        ranks* (``normalizer`` = global token or sequence count). FSDP2 averages gradients over ranks,
        so each rank multiplies its share by world_size: the averaged gradient is then exactly the
        gradient of the global loss, and a 2-rank run takes the same step as a 1-rank run.
        """
        cfg, actor, world = self.recipe, self.recipe.actor, self.dist.world_size
        n = cfg.rollout.n
        num_mini = cfg.data.train_batch_size // actor.ppo_mini_batch_size
        groups = len(rollout) // n
        groups_per_mini = max(1, groups // num_mini)
        # One process drops filtered (tied) groups outright: less compute. Several ranks keep them,
        # masked out, so that every rank runs the same number of forward passes (FSDP needs that).
        drop_inactive = world == 1
        minibatches = []
        for m in range(num_mini):
            idx = list(range(m * groups_per_mini * n, (m + 1) * groups_per_mini * n))
            minibatches.append([i for i in idx if active[i]] if drop_inactive else idx)

        on_policy = actor.ppo_epochs == 1 and num_mini == 1
        need_old = not on_policy or cfg.rollout.use_rollout_logprobs
        old_logp, ref_logp = self._reference_passes(rollout, [i for mb in minibatches for i in mb], need_old=need_old)

        sums: dict[str, float] = {}
        updates = 0
        for _epoch in range(actor.ppo_epochs):
            for mb in minibatches:
                # Global normaliser: this mini-batch's token (or sequence) count over all ranks.
                local_mask = self._response_mask(rollout, mb, active)
                normalizer = distributed.all_reduce_sum(grpo.normalizer_count(local_mask, actor.loss_agg_mode))
                if normalizer == 0:
                    continue  # every group of this mini-batch was filtered out on every rank
                self.optimizer.zero_grad(set_to_none=True)
                for micro in self._micro_batches(rollout, mb):
                    stats = self._loss_backward(rollout, micro, advantages, active, old_logp, ref_logp, normalizer, world)
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), actor.grad_clip)
                grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                sums["actor/grad_norm"] = sums.get("actor/grad_norm", 0.0) + float(grad_norm)
                self.optimizer.step()
                updates += 1
        self.optimizer.zero_grad(set_to_none=True)
        # Share metrics (pg_loss, kl, entropy) summed over micro-batches give the mini-batch value.
        out = {k: v / max(updates, 1) for k, v in sums.items() if not k.endswith("_frac")}
        micro_count = max(sums.get("_micro", 1.0), 1.0)
        out.update({k: v / micro_count for k, v in sums.items() if k.endswith("_frac")})
        out.pop("_micro", None)
        out["actor/updates"] = float(updates)
        return out

    def _micro_batches(self, rollout: Rollout, indices: list[int]) -> list[list[int]]:
        # Groups stay together (they share one prompt pass); otherwise similar lengths together, for
        # less padding. The loss is a sum, so the order does not change the math.
        size = self.recipe.actor.ppo_micro_batch_size_per_gpu
        if self.share_prompts:
            ordered = sorted(indices, key=lambda i: (i // self.recipe.rollout.n, len(rollout.response_ids[i]), i))
        else:
            ordered = sorted(indices, key=lambda i: (len(rollout.prompt_ids[i]) + len(rollout.response_ids[i]), i))
        budget = self.recipe.actor.ppo_max_token_len_per_gpu
        if budget is None:
            return [ordered[s : s + size] for s in range(0, len(ordered), size)]
        return pack_by_tokens(ordered, lambda i: len(rollout.prompt_ids[i]) + len(rollout.response_ids[i]), budget)

    def _response_mask(self, rollout: Rollout, indices: list[int], active: torch.Tensor) -> torch.Tensor:
        width = max((len(rollout.response_ids[i]) for i in indices), default=0)
        mask = torch.zeros(len(indices), width)  # [n, R]
        for row, i in enumerate(indices):
            if active[i]:
                mask[row, : len(rollout.response_ids[i])] = 1.0
        return mask

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
                logp, _, mask = self._forward(self.policy.model, rollout, micro, entropy=False)
                old.update({i: logp[row, : int(mask[row].sum())].detach() for row, i in enumerate(micro)})
            if ref is not None:
                with self.policy.reference() as ref_model:
                    logp, _, mask = self._forward(ref_model, rollout, micro, entropy=False)
                ref.update({i: logp[row, : int(mask[row].sum())] for row, i in enumerate(micro)})
        return old, ref

    def _loss_backward(self, rollout, micro, advantages, active, old_logp, ref_logp, normalizer, world) -> dict[str, float]:
        actor = self.recipe.actor
        with_entropy_grad = actor.entropy_coeff > 0
        logp, entropy, mask = self._forward(self.policy.model, rollout, micro, entropy=True, entropy_grad=with_entropy_grad)
        mask = mask * active[micro].unsqueeze(-1).to(mask.dtype)  # [m, R]  filtered groups count nothing
        old = logp.detach() if old_logp is None else pad_rows([old_logp[i] for i in micro], logp)  # [m, R]
        ref = None if ref_logp is None else pad_rows([ref_logp[i] for i in micro], logp)  # [m, R]
        loss, stats = grpo.grpo_loss(
            logp, old, advantages[micro], mask,
            clip_low=actor.clip_ratio_low, clip_high=actor.clip_ratio_high, clip_ratio_c=actor.clip_ratio_c,
            loss_agg_mode=actor.loss_agg_mode, max_response_length=self.recipe.data.max_response_length,
            ref_logp=ref, kl_coef=actor.kl_loss_coef if actor.use_kl_loss else 0.0, kl_type=actor.kl_loss_type,
            entropy=entropy, entropy_coeff=actor.entropy_coeff, normalizer=normalizer,
        )
        (loss * world).backward()  # x world: FSDP2's gradient average becomes the global sum (see _update)
        shares = {"pg_loss": "actor/pg_loss", "kl": "actor/kl", "entropy": "actor/entropy"}
        out = {name: float(stats[key]) * world for key, name in shares.items() if key in stats}
        out.update({f"actor/{k}": float(v) for k, v in stats.items() if k.endswith("_frac")})
        out["_micro"] = 1.0
        return out

    def _forward(self, model, rollout: Rollout, indices: list[int], *, entropy: bool, entropy_grad: bool = False):
        """Token log-probs (and entropy) of the responses of ``indices``: ([m, R], [m, R] | None, mask [m, R])."""
        if self.share_prompts and _takes_custom_masks(model):
            groups = group_members([i // self.recipe.rollout.n for i in indices])
            prompts = [rollout.prompt_ids[i] for i in indices]
            responses = [rollout.response_ids[i] for i in indices]
            row_lengths = [group_row_length(prompts, responses, ks) for ks in groups]
            # Eager attention keeps a [heads, L, L] score matrix per layer: long rows take the KV path.
            if model.config._attn_implementation != "eager" or max(row_lengths) <= EAGER_MAX_TOKENS:
                parts = self._forward_group_rows(model, rollout, indices, groups, row_lengths, entropy, entropy_grad)
                return self._in_order(rollout, indices, parts, entropy)
        parts = []
        for chunk in self._logit_chunks(model, rollout, indices):
            # Of the distribution that was sampled (logits / temperature, as verl does); in fp32 blocks:
            # bf16 logits are fine, bf16 log-probs are not.
            logp, ent = token_logprobs_and_entropy(
                chunk.logits, chunk.targets, temperature=self.recipe.rollout.temperature,
                entropy=entropy, entropy_grad=entropy_grad,
            )  # [b, R_b], [b, R_b] | None
            parts.append((chunk.rows, logp, ent))
        return self._in_order(rollout, indices, parts, entropy)

    def _in_order(self, rollout: Rollout, indices: list[int], parts, entropy: bool):
        """(positions in ``indices``, log-probs [b, R_b], entropies | None) per pass -> ``_forward``'s result."""
        _, mask = right_pad([rollout.response_ids[i] for i in indices], self.pad_id)  # [m, R]
        mask = mask.to(self.dist.device)
        rows = [k for positions, _, _ in parts for k in positions]
        order = torch.tensor(rows).argsort().to(self.dist.device)  # pass order -> the order of ``indices``
        logp = _stack_padded([p[1] for p in parts], mask.shape[1]).index_select(0, order)  # [m, R]
        ent = _stack_padded([p[2] for p in parts], mask.shape[1]).index_select(0, order) if entropy else None  # [m, R]
        return logp, ent, mask

    def _forward_group_rows(self, model, rollout: Rollout, indices: list[int], groups: list[list[int]],
                            row_lengths: list[int], entropy: bool, entropy_grad: bool):
        """``_forward``'s passes with a row per group: its prompt once, then its responses side by side.

        The n samples of a group share their prompt (most of the tokens in short-answer tasks), so
        it runs once; a 4D attention mask keeps the responses apart (``batching.GroupRows``). Rows of
        similar length run together (``length_buckets``): usually one pass for the whole micro-batch
        instead of a prompt pass plus one per length bucket of responses, with more rows per matmul.
        Same values as ``_logits_full`` up to float rounding.
        """
        parts = []
        for bucket in length_buckets(row_lengths):
            positions = [k for g in bucket for k in groups[g]]
            logp, ent = self._group_rows_pass(model, rollout, [indices[k] for k in positions], entropy, entropy_grad)
            parts.append((positions, logp, ent))
        return parts

    def _group_rows_pass(self, model, rollout: Rollout, indices: list[int], entropy: bool, entropy_grad: bool):
        """One forward pass over ``GroupRows``: per-token log-probs (and entropies) [m, R] in ``indices`` order."""
        device = self.dist.device
        temperature = self.recipe.rollout.temperature
        n = self.recipe.rollout.n
        rows = group_rows(
            [rollout.prompt_ids[i] for i in indices], [rollout.response_ids[i] for i in indices],
            [i // n for i in indices], self.pad_id,
        )
        allowed = rows.allowed.unsqueeze(1).to(device)  # [G, 1, L, L]
        if model.config._attn_implementation == "eager":  # eager adds the mask to the scores
            attention = torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)
        else:  # sdpa takes it as it is
            attention = allowed
        length = rows.input_ids.shape[1]
        width = length - rows.prompt_width  # response input columns
        # The last prompt column and every response column go through the LM head. As indices, not
        # a count: the model then gathers a contiguous copy of those hidden states; a sliced view
        # made matmul expand the LM head's weight into a [1, H, V] copy per call (33 ms each).
        keep = torch.arange(length - width - 1, length, device=device)
        with self._autocast():
            logits = model(
                input_ids=rows.input_ids.to(device),
                attention_mask=attention,
                position_ids=rows.position_ids.to(device),
                logits_to_keep=keep,
                use_cache=False,
            ).logits  # [G, 1 + width, V]
        per_row = rows.first_targets.shape[1]
        first = logits[:, :1, :].expand(-1, per_row, -1)  # [G, S, V]  one prediction, each sample's first token
        logp_first, ent_first = token_logprobs_and_entropy(
            first, rows.first_targets.to(device), temperature=temperature, entropy=entropy, entropy_grad=entropy_grad
        )  # [G, S]
        logp_next, ent_next = token_logprobs_and_entropy(
            logits[:, 1:, :], rows.next_targets.to(device), temperature=temperature, entropy=entropy, entropy_grad=entropy_grad
        )  # [G, width]
        logp = rows.gather(logp_first, logp_next)  # [m, R]
        return logp, rows.gather(ent_first, ent_next) if entropy else None

    def _logit_chunks(self, model, rollout: Rollout, indices: list[int]) -> list[LogitChunk]:
        with self._autocast():
            if self.share_prompts:
                return self._logits_shared_prompts(model, rollout, indices)
            return self._logits_full(model, rollout, indices)

    @contextlib.contextmanager
    def _training_weights(self):
        """bf16 compute: the frozen weights cast once per step instead of at every forward.

        And peft's LoRA layers stop casting their input to the adapter's fp32: autocast cast a bf16
        input up and straight back down for each adapter matmul (the same values, two copies).
        """
        from tunecli.trainer.policy import frozen_linear_weights_as
        from tunecli.trainer.rollout.weights import is_peft

        if self.recipe.actor.compute_dtype != "bfloat16":
            yield
            return
        with contextlib.ExitStack() as stack:
            stack.enter_context(frozen_linear_weights_as(torch.bfloat16, self.policy.model, self.policy.frozen_reference))
            if is_peft(self.policy.model):
                from peft.helpers import disable_input_dtype_casting

                stack.enter_context(disable_input_dtype_casting(self.policy.model))
            yield

    def _autocast(self):
        """Matmuls in bf16 when actor.compute_dtype asks (weights and optimizer stay in their dtype)."""
        enabled = self.recipe.actor.compute_dtype == "bfloat16"
        return torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16, enabled=enabled)

    @property
    def share_prompts(self) -> bool:
        # Gradient checkpointing turns the KV cache off in training passes, so it needs the plain path.
        return not self.recipe.model.enable_gradient_checkpointing

    def _logits_full(self, model, rollout: Rollout, indices: list[int]) -> list[LogitChunk]:
        """One pass per length bucket over [prompt | response] rows: the straightforward way."""
        device = self.dist.device
        totals = [len(rollout.prompt_ids[i]) + len(rollout.response_ids[i]) for i in indices]
        chunks = []
        for bucket in length_buckets(totals):
            sel = [indices[k] for k in bucket]
            input_ids, attention_mask, position_ids, mask = collate(
                [rollout.prompt_ids[i] for i in sel], [rollout.response_ids[i] for i in sel], self.pad_id
            )  # [b, P+R], [b, P+R], [b, P+R], [b, R]
            width = mask.shape[1]
            out = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device),
                logits_to_keep=width + 1,  # only the response positions go through the LM head
                use_cache=False,
            )
            logits = out.logits[:, :-1, :]  # [b, R, V]  position t predicts response token t
            chunks.append(LogitChunk(bucket, logits, input_ids[:, -width:].to(device)))
        return chunks

    def _logits_shared_prompts(self, model, rollout: Rollout, indices: list[int]) -> list[LogitChunk]:
        """The n samples of a group share their prompt: run each prompt once, then the responses on its KV cache.

        The fallback of ``_forward_group_rows`` for attention kernels that take no 4D mask
        (flash-attention) and sliding-window models.

        Prompts are most of the tokens in short-answer tasks (~46 of ~58 for the quickstart), so this
        does a fraction of the work of ``_logits_full``; gradients flow into the shared prompt pass
        through the cache (index_select is differentiable). The responses run in length buckets, so
        a short answer is not padded to the longest one. Same values up to float rounding.
        """
        from transformers import DynamicCache

        device = self.dist.device
        n = self.recipe.rollout.n
        group_of = [i // n * n for i in indices]  # the group's first sample (samples are prompt-major)
        groups = sorted(set(group_of))
        row = {g: r for r, g in enumerate(groups)}
        prompt_ids, prompt_mask = left_pad([rollout.prompt_ids[g] for g in groups], self.pad_id)  # [G, P]
        prompt_mask = prompt_mask.to(device)
        prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # [G, P]
        out = model(
            input_ids=prompt_ids.to(device),
            attention_mask=prompt_mask,
            position_ids=prompt_pos,
            use_cache=True,
            logits_to_keep=1,  # the prompt's last position predicts the first response token
        )
        first_logits = out.logits[:, -1:, :]  # [G, 1, V]
        plain = _plain_kv_cache(out.past_key_values)
        prompt_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers] if plain else None  # [G, heads, P, d]
        prompt_len = prompt_mask.sum(-1)  # [G]
        lengths = [len(rollout.response_ids[i]) for i in indices]
        buckets = length_buckets(lengths) if plain else [list(range(len(indices)))]
        chunks = []
        for bucket in buckets:
            select = torch.tensor([row[group_of[k]] for k in bucket], device=device)  # [b]
            resp_ids, mask = right_pad([rollout.response_ids[indices[k]] for k in bucket], self.pad_id)  # [b, R]
            resp_ids, mask = resp_ids.to(device), mask.to(device)
            first = first_logits.index_select(0, select)  # [b, 1, V]
            if resp_ids.shape[1] == 1:
                chunks.append(LogitChunk(bucket, first, resp_ids))
                continue
            # Response tokens 0..R-2 predict tokens 1..R-1, attending to the cached prompt.
            if plain:  # each bucket its own copy of its groups' prompt cache
                cache = DynamicCache(ddp_cache_data=[(k.index_select(0, select), v.index_select(0, select)) for k, v in prompt_kv])
            else:  # one bucket: the cache itself, expanded to the rows
                cache = out.past_key_values
                cache.reorder_cache(select)
            attention = torch.cat([prompt_mask.index_select(0, select), mask[:, :-1].long()], dim=1)  # [b, P+R-1]
            positions = prompt_len.index_select(0, select).unsqueeze(1) + torch.arange(resp_ids.shape[1] - 1, device=device)  # [b, R-1]
            rest = model(
                input_ids=resp_ids[:, :-1],
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).logits  # [b, R-1, V]
            chunks.append(LogitChunk(bucket, torch.cat([first, rest], dim=1), resp_ids))  # [b, R, V]
        return chunks

    # =========================================================================================
    # validate, checkpoint, summary
    # =========================================================================================
    def validate(self) -> dict[str, float]:
        """Greedy accuracy on the held-out prompts (a sample counts when its reward is >= 1)."""
        t0 = now()
        prompts = self.val_samples[self.dist.rank :: self.dist.world_size]
        sampling = SamplingSettings(n=1, temperature=0.0, max_new_tokens=self.recipe.data.max_response_length)
        rollout = self._generate(prompts, sampling) if prompts else None
        rewards = self._score(prompts, rollout) if prompts else torch.zeros(0)
        correct = distributed.all_reduce_sum(float((rewards >= 1.0).sum()))
        total = distributed.all_reduce_sum(float(len(rewards)))
        reward_sum = distributed.all_reduce_sum(float(rewards.sum()))
        metrics = {"val/acc": correct / max(total, 1), "val/reward": reward_sum / max(total, 1), "timing/val_s": now() - t0}
        self._last_val_s = metrics["timing/val_s"]
        self.logger.log(self.step, metrics, show=False)
        self._print(f"validation @ step {self.step}: held-out accuracy {metrics['val/acc']:.3f} ({int(correct)}/{int(total)}), {metrics['timing/val_s']:.1f}s")
        return metrics

    def _step_start_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "rng": checkpoint.rng_state()}

    def _restore_step_start_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        checkpoint.set_rng_state(state["rng"])

    def save_checkpoint(self) -> Path:
        state = {"step": self.step, "sampler": self.sampler.state_dict(), "scheduler": self.scheduler.state_dict()}
        return checkpoint.save(self.run_dir, self.step, self.policy.model, self.optimizer, state, dump_recipe(self.recipe))

    def _should_stop(self) -> bool:
        """True on every rank as soon as any rank got Ctrl-C (they must stop at the same step)."""
        return distributed.all_reduce_sum(float(self._stop_requested)) > 0

    def _summarize(self) -> None:
        peak = distributed.all_reduce_sum(self.memory.peak) / GIB
        if not distributed.is_main():
            return
        from rich.table import Table

        plot = self.logger.plot(self.run_dir / "reward.png")
        extra = {"peak memory (RSS, all processes)": f"{peak:.2f} GiB", "run directory": str(self.run_dir)}
        if plot:
            extra["reward curve"] = str(plot)
        table = Table(title=f"GRPO run summary: {self.recipe.name}", header_style="bold")
        table.add_column("")
        table.add_column("")
        for row in self.logger.summary_rows(extra):
            table.add_row(*row)
        self.logger.print(table)
        summary = {r[0]: r[1] for r in self.logger.summary_rows(extra)} | {"peak_rss_gib": round(peak, 3), "steps": self.step}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    def _print(self, text) -> None:
        if distributed.is_main():
            logger = getattr(self, "logger", None)
            if logger is not None:
                logger.print(text)
            else:
                from rich import print as rprint

                rprint(text)

    # =========================================================================================
    # cleanup
    # =========================================================================================
    def cleanup(self) -> None:
        if self.engine is not None:
            self.engine.close()
        if getattr(self, "memory", None):
            self.memory.stop()
        distributed.shutdown()


def run_training(recipe: Recipe, *, resume: bool | None = None, resume_hint: str | None = None) -> int:
    """setup -> train -> cleanup; returns the process exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = Trainer(recipe, resume=resume, resume_hint=resume_hint)
    try:
        trainer.setup()
        code = trainer.train()
        # Ranks leave together: a rank that tears its process group down while another still talks
        # to it (rank 0 writes the summary) is how gloo aborts at exit.
        distributed.barrier()
        return code
    finally:
        trainer.cleanup()


def _stack_padded(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """[b_k, R_k] parts -> [sum b_k, width], zeros past each part's width."""
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts], dim=0)


def _takes_custom_masks(model) -> bool:
    """Whether a 4D attention mask is all the model's attention needs (``_forward_group_rows``):
    eager or sdpa kernels, and no sliding-window layers (their window is part of the mask they build)."""
    config = model.config
    if getattr(config, "_attn_implementation", None) not in ("eager", "sdpa"):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return getattr(config, "sliding_window", None) is None


def _plain_kv_cache(cache) -> bool:
    """Only full-attention layers can be copied per bucket (sliding-window or recurrent ones cannot)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))
