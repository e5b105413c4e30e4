"""`tune export --what merged --dtype`: the export serves in vLLM with the trained model's greedy output;
`--push-to-hub` offline is one clear error before anything is written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from test_train_e2e import train, write_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from test_vllm_engine import _make_peaky_model  # head_dim 64 (vLLM's CPU attention) and decisive greedy choices

    tmp = tmp_path_factory.mktemp("serve")
    base = _make_peaky_model(tmp / "base")
    run_dir = tmp / "run"
    config = write_recipe(tmp, base, run_dir, **{"trainer.total_training_steps": 1})
    done = train(config, "trainer.val_before_train=false", "actor.ppo_epochs=1", "rollout.name=hf",
                 "actor.compute_dtype=float32")  # the export's bf16 is the one rounding compared
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir


def _export(*args):
    from tunecli.cli import app

    return CliRunner().invoke(app, ["export", *map(str, args)])


@pytest.mark.vllm
def test_merged_bf16_export_serves_in_vllm_like_the_trained_model(trained_run, tmp_path):
    pytest.importorskip("vllm")
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from tunecli.trainer.export import find_checkpoint, load_trained, verified_recipe
    from tunecli.trainer.rollout import SamplingSettings
    from tunecli.trainer.rollout.base import EngineSettings
    from tunecli.trainer.rollout.vllm import VLLMEngine

    out = tmp_path / "out"
    result = _export(trained_run, "--what", "merged", "--dtype", "bfloat16", "--out", out)
    assert result.exit_code == 0, result.output
    merged = out / "merged"
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(next(merged.glob("*.safetensors"))), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}

    # transformers on the trained weights (the checkpoint, merged in memory, float32) and on the base
    ckpt = find_checkpoint(trained_run, None)
    recipe = verified_recipe(ckpt)
    trained = load_trained(ckpt, recipe).model.merge_and_unload().eval()
    base = AutoModelForCausalLM.from_pretrained(recipe.model.path, dtype=torch.float32).eval()
    prompts = [[1, 520, 33, 44, 99, 7], [5, 6, 7, 8]]

    rollout = recipe.rollout.model_copy(update={"name": "vllm", "dtype": "bfloat16", "max_num_seqs": 4, "gpu_memory_utilization": 0.05})
    served = VLLMEngine(EngineSettings(rollout=rollout, model_path=str(merged), trust_remote_code=False, lora_rank=None,
                                       seed=0, max_model_len=64, device="cpu"))
    try:
        got = served.generate(prompts, SamplingSettings(n=1, temperature=0.0, max_new_tokens=8, logprobs=False)).response_ids
    finally:
        served.close()
    # Every token vLLM chose is the trained model's greedy choice, up to the bf16 rounding of the export
    # (exact equality with a bf16 transformers run broke on a tie: 44.301 vs 44.278 in float32, both
    # 44.25 in bf16), and is not what the base model would choose: the export carries the training.
    trained_gaps = [_greedy_gap(trained, p, g) for p, g in zip(prompts, got)]
    base_gaps = [_greedy_gap(base, p, g) for p, g in zip(prompts, got)]
    assert all(len(g) > 0 for g in got)
    assert max(trained_gaps) < 0.5, (got, trained_gaps)
    assert max(base_gaps) > 1.0, (got, base_gaps)


def _greedy_gap(model, prompt: list[int], tokens: list[int]) -> float:
    """Teacher-forced: the largest (best logit - logit of the token taken) over ``tokens`` after ``prompt``;
    0 when every token is the model's own greedy choice."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float()
    taken = logits.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)
    return float((logits.max(dim=1).values - taken).max())


def test_push_to_hub_offline_is_one_clear_error_and_writes_nothing(trained_run, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    result = _export(trained_run, "--what", "merged", "--out", out, "--push-to-hub", "me/model")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "HF_HUB_OFFLINE=1" in text and "nothing was pushed" in text and "Traceback" not in result.output
    assert not out.exists()


def test_export_dtype_is_checked(trained_run, tmp_path):
    result = _export(trained_run, "--dtype", "int8", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "--dtype = 'int8'" in " ".join(result.output.split())
