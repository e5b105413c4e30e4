"""Samples whose loss has no gradient (advantage 0: a tied GRPO group) are not run, and a mini-batch
with none that has one takes no optimizer step. Skipping them must not change the update."""

from __future__ import annotations

import pytest
import torch

from tunecli.algorithms.losses import POLICY_LOSSES, carries_gradient, policy_loss
from tunecli.trainer import batching, distributed
from tunecli.trainer.batching import plan_mini_batch, samples_to_run
from tunecli.trainer.rollout import Rollout


@pytest.mark.parametrize("loss_mode", sorted(POLICY_LOSSES))
def test_every_registered_loss_is_flat_where_the_advantage_is_zero(loss_mode):
    """What ``carries_gradient`` relies on, for each registered surrogate (a new one must keep it)."""
    torch.manual_seed(0)
    logp = (-torch.rand(3, 5)).requires_grad_()  # [3, 5]
    old = logp.detach() + 0.3 * torch.randn(3, 5)  # ratios far from 1: clipping and dual clip in play
    advantages = torch.tensor([0.0, 1.5, -2.0])
    loss, _ = policy_loss(logp, old, advantages, torch.ones(3, 5), loss_mode=loss_mode, clip_low=0.2, clip_high=0.2,
                          clip_ratio_c=3.0, loss_agg_mode="token-mean", max_response_length=5)
    loss.backward()
    assert torch.all(logp.grad[0] == 0) and torch.any(logp.grad[1:] != 0)


def test_carries_gradient_unless_kl_or_entropy_is_in_the_loss():
    adv = torch.tensor([0.0, 0.5, 0.0, -1.0])
    assert carries_gradient(adv, kl_in_loss=False, entropy_in_loss=False).tolist() == [False, True, False, True]
    assert carries_gradient(adv, kl_in_loss=True, entropy_in_loss=False).all()
    assert carries_gradient(adv, kl_in_loss=False, entropy_in_loss=True).all()
    per_token = torch.tensor([[0.0, 0.0], [0.0, 0.2]])
    assert carries_gradient(per_token, kl_in_loss=False, entropy_in_loss=False).tolist() == [False, True]


def test_plan_counts_every_counted_sample_but_runs_only_the_trained():
    responses = [[5, 6], [5], [5, 6, 7], [5]]
    counted = torch.tensor([True, True, True, True])
    trained = torch.tensor([False, False, True, True])
    mb = plan_mini_batch(responses, [0, 1, 2, 3], counted, trained, "token-mean", 1, distributed.all_reduce_sum_tensor)
    assert mb.run == [2, 3] and mb.normalizer == 7 and mb.ran == 4  # the loss still divides by all 7 tokens
    mb = plan_mini_batch(responses, [0, 1, 2, 3], counted, trained, "seq-mean-token-mean", 1, distributed.all_reduce_sum_tensor)
    assert (mb.normalizer, mb.ran) == (4, 2)
    assert plan_mini_batch(responses, [0, 1], counted, trained, "token-mean", 1, distributed.all_reduce_sum_tensor) is None
    assert samples_to_run([0, 1, 2, 3], trained, world_size=2) == [0, 1, 2, 3]  # ranks run the same passes


# ------------------------------------------------------------------ the trainer's update, both ways
REWARDS = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])  # group 0 tied, group 1 varied


def _trainer(tiny_model_dir, overrides):
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.loop import Trainer
    from tunecli.trainer.precision import resolve_compute_dtype

    recipe = recipe_from_dict({"model": {"path": str(tiny_model_dir), "method": "lora", "lora_rank": 4, "lora_alpha": 8}},
                              ["rollout.n=4", "data.train_batch_size=2", "actor.ppo_mini_batch_size=2",
                               "actor.ppo_micro_batch_size_per_gpu=8", "actor.lr=0.01", "actor.compute_dtype=float32",
                               "actor.use_kl_loss=false", "actor.entropy_coeff=0", "trainer.device=cpu", *overrides])
    trainer = Trainer(recipe)
    trainer.dist = distributed.init("cpu")
    trainer.compute = resolve_compute_dtype("float32", trainer.dist.device, distributed.all_reduce_sum)
    torch.manual_seed(0)
    trainer._setup_model()
    trainer.total_steps = 1
    trainer._setup_optimizer()
    return trainer


def _update(trainer, rollout):
    # Plain SGD: the weights move by the gradient itself (Adam's first step is lr x its sign, which
    # turns rounding-level differences of near-zero entries into whole steps).
    trainer.optimizer = torch.optim.SGD(trainer.policy.trainable_parameters(), lr=1.0)
    advantages, active, _ = trainer._advantages(REWARDS, rollout)
    metrics = trainer._update(rollout, advantages, active)
    weights = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if p.requires_grad}
    return metrics, weights


@pytest.mark.parametrize("overrides", [[], ["actor.loss_agg_mode=seq-mean-token-mean"]])
def test_skipping_silent_samples_changes_no_weight(tiny_model_dir, monkeypatch, overrides):
    rollout = Rollout(prompt_ids=[[1, 7, 9]] * 4 + [[1, 8]] * 4, response_ids=[[5, 6], [5], [5, 6, 7], [6, 6, 6, 6],
                      [5, 9], [7], [8, 8, 8], [9, 5]], finished=[True] * 8, group_size=4)
    skipped, skipped_weights = _update(_trainer(tiny_model_dir, overrides), rollout)
    monkeypatch.setattr(batching, "samples_to_run", lambda mb, trained, world_size: list(mb))  # run every sample
    full, full_weights = _update(_trainer(tiny_model_dir, overrides), rollout)
    assert skipped["actor/trained_frac"] == 0.5 and skipped["actor/updates"] == 1.0
    assert skipped["actor/pg_loss"] == pytest.approx(full["actor/pg_loss"], abs=1e-6)
    for name, weight in full_weights.items():
        assert torch.allclose(skipped_weights[name], weight, atol=1e-6), name
    assert any(not torch.equal(w, 0 * w) for n, w in full_weights.items() if "lora_B" in n)  # the update did move B


def test_a_step_with_no_gradient_takes_no_optimizer_step(tiny_model_dir):
    trainer = _trainer(tiny_model_dir, [])
    before = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if p.requires_grad}
    rollout = Rollout(prompt_ids=[[1, 7, 9]] * 8, response_ids=[[5, 6]] * 8, finished=[True] * 8, group_size=4)
    advantages, active, _ = trainer._advantages(torch.ones(8), rollout)  # both groups tied
    metrics = trainer._update(rollout, advantages, active)
    assert metrics["actor/updates"] == 0.0 and metrics["actor/trained_frac"] == 0.0
    assert not trainer.optimizer.state  # Adam never stepped
    for name, p in trainer.policy.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), before[name]), name


def test_the_engine_is_synced_only_after_an_optimizer_step(tmp_path, tiny_model_dir, monkeypatch):
    """Greedy samples of one prompt are all alike: every group tied, no optimizer step, and then the
    engine already holds the policy's weights (a sync would cost ~0.4 s of a quickstart step)."""
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.loop import Trainer

    recipe = recipe_from_dict({
        "model": {"path": str(tiny_model_dir), "lora_rank": 4, "lora_alpha": 8},
        "data": {"dataset": "arithmetic", "train_size": 8, "val_size": 2, "train_batch_size": 2, "max_response_length": 4},
        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 4, "use_kl_loss": False, "entropy_coeff": 0.0},
        "rollout": {"name": "hf", "n": 2, "temperature": 0.0},
        "trainer": {"default_local_dir": str(tmp_path / "run"), "val_before_train": False, "num_threads": 1},
    })
    trainer = Trainer(recipe, resume=False)
    trainer.setup()
    try:
        syncs = []
        monkeypatch.setattr(trainer, "_sync_engine", lambda: syncs.append(trainer.step))
        metrics = trainer.train_step()
        assert metrics["groups/zero_variance_frac"] == 1.0 and metrics["actor/updates"] == 0.0 and syncs == []
        tied_advantages = trainer._advantages
        monkeypatch.setattr(trainer, "_advantages", lambda rewards, rollout: tied_advantages(torch.arange(len(rewards)).float(), rollout))
        metrics = trainer.train_step()
        assert metrics["actor/updates"] == 1.0 and syncs == [0]
    finally:
        trainer.cleanup()
