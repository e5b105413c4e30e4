"""A LoRA checkpoint holds the adapter and its optimizer state, no frozen tensor, and loads back."""

from __future__ import annotations

import pytest

from tunecli.config.schema import Recipe


@pytest.fixture()
def lora_policy(tiny_model_dir):
    import torch

    from tunecli.trainer.policy import load_policy

    recipe = Recipe.model_validate({"model": {"path": str(tiny_model_dir), "method": "lora", "lora_rank": 4}})

    def make():
        policy = load_policy(recipe, torch.device("cpu"))
        optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
        return policy, optimizer

    return make


def _step(policy, optimizer) -> None:
    import torch

    loss = policy.model(input_ids=torch.tensor([[1, 520, 33, 44]])).logits.float().pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _trainable(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_checkpoint_stores_only_trainable_tensors(tmp_path, lora_policy):
    from torch.distributed.checkpoint import FileSystemReader

    from tunecli.trainer import checkpoint

    policy, optimizer = lora_policy()
    _step(policy, optimizer)
    ckpt = checkpoint.save(tmp_path, 1, policy.model, optimizer, {"step": 1}, {})

    stored = FileSystemReader(str(ckpt / "model_optim")).read_metadata().state_dict_metadata
    model_keys = {k.removeprefix("model.") for k in stored if k.startswith("model.")}
    # The tied lm_head (a second name of the frozen embeddings) was stored too: 12.6 of 13.2 MB here.
    assert model_keys == set(_trainable(policy.model))
    frozen_bytes = sum(p.numel() * p.element_size() for p in policy.model.parameters() if not p.requires_grad)
    size = sum(f.stat().st_size for f in (ckpt / "model_optim").rglob("*") if f.is_file())
    assert size < frozen_bytes / 4


def test_lora_checkpoint_resumes_and_loads_for_export(tmp_path, lora_policy):
    import torch

    from tunecli.trainer import checkpoint

    policy, optimizer = lora_policy()
    _step(policy, optimizer)
    ckpt = checkpoint.save(tmp_path, 1, policy.model, optimizer, {"step": 1}, {})
    saved, moments = _trainable(policy.model), {k: v["exp_avg"].clone() for k, v in optimizer.state_dict()["state"].items()}

    resumed, resumed_opt = lora_policy()
    assert checkpoint.load(ckpt, resumed.model, resumed_opt) == {"step": 1}
    for name, value in _trainable(resumed.model).items():
        assert torch.equal(value, saved[name]), name
    for key, value in resumed_opt.state_dict()["state"].items():
        assert torch.equal(value["exp_avg"], moments[key])

    exported, _ = lora_policy()  # what `tune export` does: weights only
    checkpoint.load(ckpt, exported.model, None)
    for name, value in _trainable(exported.model).items():
        assert torch.equal(value, saved[name]), name
