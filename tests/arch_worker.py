"""Worker of test_architectures.py: every family's checks in one process, results as JSON.

    python tests/arch_worker.py OUT_DIR [FAMILY ...]

One process for all families (vLLM's process-wide state, its one-process torch.distributed group, stays
out of the pytest process), each family's engine kept alive until the end: closing and restarting
in-process engines is not what this file tests.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch

FAMILIES = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3"]
MAX_NEW = 10
LORA_RANK = 8
PROMPTS = ["What is 47+38?", "The capital of France is", "Once upon a time"]
CONFIGS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "gemma2": "Gemma2Config",
           "gemma3": "Gemma3TextConfig", "mistral": "MistralConfig", "phi3": "Phi3Config"}
# Gemma ties its LM head to the embeddings (vLLM's Gemma has no lm_head), and its logit soft-capping is
# off: with random weights it squeezes the margins greedy equality relies on.
GEMMA = {"final_logit_softcapping": None, "attn_logit_softcapping": None, "tie_word_embeddings": True}
EXTRA = {"gemma2": GEMMA, "gemma3": GEMMA,
         "phi3": {"original_max_position_embeddings": 256}}


def make_model(family: str, out: Path) -> Path:
    """2 layers, head_dim 64 (vLLM's CPU attention), logits scaled 30x (the untied LM head, or Gemma's final
    norm): greedy choices have wide margins, so two kernels' rounding cannot flip a token."""
    import transformers

    from tunecli.trainer.embedded import embedded_model_dir

    tokenizer = transformers.AutoTokenizer.from_pretrained(embedded_model_dir())
    shape = dict(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                 tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    config = getattr(transformers, CONFIGS[family])(**{**shape, **EXTRA.get(family, {})})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        if family.startswith("gemma"):
            model.model.norm.weight.add_(29)  # Gemma's RMSNorm scales by (1 + weight): 30x
        else:
            model.get_output_embeddings().weight.mul_(30)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def hf_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.no_grad()
def hf_greedy(model, prompts):
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    outs = []
    for p in prompts:
        ids = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=MAX_NEW, temperature=None, top_p=None,
                             top_k=None)[0, len(p):].tolist()
        outs.append(ids[: next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))])
    return outs


def greedy(engine, prompts):
    from tunecli.trainer.rollout.base import SamplingSettings

    return engine.generate(prompts, SamplingSettings(n=1, temperature=0.0, max_new_tokens=MAX_NEW)).response_ids


def sync(engine, model) -> None:
    from tunecli.trainer.weights import weight_stream

    engine.update_weights(weight_stream(model, engine.weight_format))


def trainer_for(model_dir: Path, run_dir: Path, engine: str, method: str):
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.loop import Trainer

    # Rewards that differ inside every group: a non-zero advantage, so the step must move the weights.
    reward = run_dir.parent / "noisy.py"
    reward.write_text("import random\n\n\ndef reward(prompt, completion, ground_truth, **kwargs):\n    return random.random()\n")
    recipe = recipe_from_dict({
        "model": {"path": str(model_dir), "method": method, "lora_rank": LORA_RANK, "lora_alpha": 16},
        "reward": {"function": f"{reward}:reward"},
        "data": {"train_batch_size": 2, "max_prompt_length": 48, "max_response_length": 8, "val_size": 2},
        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 4, "lr": 1e-2},
        "rollout": {"name": engine, "n": 2, "dtype": "float32", "gpu_memory_utilization": 0.05, "max_num_seqs": 8},
        "trainer": {"default_local_dir": str(run_dir), "device": "cpu", "val_before_train": False, "total_training_steps": 1},
    })
    trainer = Trainer(recipe, resume=False)
    trainer.setup()
    return trainer


def training_step_moves_weights(trainer) -> bool:
    params = trainer.policy.trainable_parameters()
    before = [p.detach().clone() for p in params]
    metrics = trainer.train_step()
    finite = metrics is not None and all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    return finite and any(not torch.equal(a, p.detach()) for a, p in zip(before, params))


def sync_checks(engine, model_dir: Path) -> dict[str, bool]:
    """Full-weight sync and LoRA merge sync: greedy output changes and equals transformers' on the same weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(t)["input_ids"] for t in PROMPTS]
    out: dict[str, bool] = {}
    saved = hf_model(model_dir)
    sync(engine, saved)  # the saved weights again (the training step moved the engine's)
    before = greedy(engine, prompts)
    out["same_weights_same_tokens"] = before == hf_greedy(saved, prompts)
    g = torch.Generator().manual_seed(1)
    noisy = hf_model(model_dir)
    with torch.no_grad():
        for name, p in noisy.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 2)
    sync(engine, noisy)
    after = greedy(engine, prompts)
    out["full_sync_changes_output"] = after != before
    out["full_sync_equals_transformers"] = after == hf_greedy(noisy, prompts)
    sync(engine, saved)
    out["sync_back_restores"] = greedy(engine, prompts) == before
    policy = get_peft_model(hf_model(model_dir), LoraConfig(r=LORA_RANK, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # B starts at zero: a real adapter
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    sync(engine, policy.eval())
    merged = greedy(engine, prompts)
    out["lora_merge_sync_changes_output"] = merged != before
    out["lora_merge_sync_equals_transformers"] = merged == hf_greedy(policy, prompts)
    return out


def run_family(family: str, root: Path, alive: list) -> dict:
    result: dict = {"error": None}
    start = time.monotonic()
    try:
        model_dir = make_model(family, root / family / "model")
        hf = trainer_for(model_dir, root / family / "run-hf", "hf", "full")
        result["hf_full_step_moves_weights"] = training_step_moves_weights(hf)
        hf.cleanup()
        trainer = trainer_for(model_dir, root / family / "run-vllm", "vllm", "lora")
        alive.append(trainer)  # kept until exit: see the module docstring
        result["vllm_lora_step_moves_weights"] = training_step_moves_weights(trainer)
        result.update(sync_checks(trainer.engine, model_dir))
    except Exception as e:  # reported per family; the test prints it
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()[-3000:]
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def main() -> None:
    root = Path(sys.argv[1])
    families = sys.argv[2:] or FAMILIES
    alive: list = []
    results = {}
    for family in families:
        results[family] = run_family(family, root, alive)
        print(family, json.dumps({k: v for k, v in results[family].items() if k != "traceback"}), flush=True)
    (root / "results.json").write_text(json.dumps(results, indent=1))
    sys.stdout.flush()
    os._exit(0)  # the results are written; skip tearing down seven engines at exit


if __name__ == "__main__":
    main()
