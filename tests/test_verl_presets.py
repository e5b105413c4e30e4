"""Each of the 12 verl presets, rendered to NAME.yaml and read back, carries the card's values.

The expected numbers are typed in from ../shared/reference/verl-tuning-recipes.md (not read from
the catalogue), so a wrong catalogue value fails here.
"""

from __future__ import annotations

import pytest

from tunecli.authoring.defaults import Choices, build_recipe
from tunecli.config.io import load_recipe
from tunecli.authoring.render import render, write_files

LORA = dict(method="lora", rank=32, alpha=32, lr=3e-5, prompt=512, response=1024, n=5, kl=0.001, entropy=0.001,
            save=20, test=5, epochs=1, max_model_len=1536, shuffle=False)
FULL = dict(method="full", lr=1e-6, batch=1024, mini=256, micro=16, prompt=1024, response=1024, n=5, kl=0.001,
            entropy=0.0, save=-1, test=5)

# name: (model path, hardware, nodes, gpus per node, expected values)
CARDS = {
    "qwen2.5-0.5b_grpo-lora_1_h100_fsdp_vllm": ("Qwen/Qwen2.5-0.5B-Instruct", "h100", 1, 1,
        {**LORA, "batch": 1, "mini": 1, "micro": 1, "n": 1, "tp": 1, "gmu": 0.5}),
    "qwen2.5-1.5b_grpo-lora_1_h100_fsdp_vllm": ("Qwen/Qwen2.5-1.5B-Instruct", "h100", 1, 1,
        {**LORA, "batch": 128, "mini": 128, "micro": 128, "tp": 1, "gmu": 0.1}),
    "qwen2.5-3b_grpo-lora_1_h100_fsdp_vllm": ("Qwen/Qwen2.5-3B-Instruct", "h100", 1, 1,
        {**LORA, "batch": 62, "mini": 62, "micro": 62, "tp": 1, "gmu": 0.1}),
    "qwen2.5-7b_grpo-lora_1_h100_fsdp_vllm": ("Qwen/Qwen2.5-7B-Instruct", "h100", 1, 1,
        {**LORA, "batch": 16, "mini": 16, "micro": 16, "tp": 1, "gmu": 0.2}),
    "qwen2.5-14b_grpo-lora_2_h100_fsdp_vllm": ("Qwen/Qwen2.5-14B-Instruct", "h100", 1, 2,
        {**LORA, "batch": 116, "mini": 116, "micro": 58, "tp": 2, "gmu": 0.25}),
    "qwen2.5-32b_grpo-lora_4_h100_fsdp_vllm": ("Qwen/Qwen2.5-32B-Instruct", "h100", 1, 4,
        {**LORA, "batch": 180, "mini": 180, "micro": 45, "tp": 4, "gmu": 0.3}),
    "qwen2.5-72b_grpo-lora_8_h100_fsdp_vllm": ("Qwen/Qwen2.5-72B-Instruct", "h100", 1, 8,
        {**LORA, "batch": 176, "mini": 176, "micro": 22, "tp": 8, "gmu": 0.4, "epochs": 15}),
    "qwen2-7b_grpo_2_h800_fsdp_vllm": ("Qwen/Qwen2-7B-Instruct", "h800", 1, 2,
        {**FULL, "tp": 2, "gmu": 0.6, "epochs": 15}),
    "qwen2.5-coder-14b_grpo_4_h800_fsdp_vllm": ("Qwen/Qwen2.5-Coder-14B-Instruct", "h800", 1, 4,
        {**FULL, "tp": 4, "gmu": 0.5, "epochs": 1}),
    "qwen2.5-32b-base_grpo_8_h20_fsdp_vllm": ("Qwen/Qwen2.5-32B", "h20", 1, 8,
        {**FULL, "tp": 4, "gmu": 0.5, "epochs": 1}),
    "qwen2-72b_grpo_32_h20_fsdp_vllm": ("Qwen/Qwen2-72B-Instruct", "h20", 4, 8,
        {**FULL, "prompt": 512, "response": 512, "tp": 16, "gmu": 0.6, "epochs": 1, "max_tokens": 24000}),
    "qwen2-72b_grpo_32_h800_fsdp_vllm": ("Qwen/Qwen2-72B-Instruct", "h800", 4, 8,
        {**FULL, "prompt": 512, "response": 512, "tp": 16, "gmu": 0.6, "epochs": 1, "max_tokens": 24000}),
}


def test_all_twelve_cards_are_covered():
    assert len(CARDS) == 12


@pytest.mark.parametrize("name", list(CARDS))
def test_rendered_preset_reproduces_card_values(name, tmp_path):
    model, hardware, nodes, gpus, v = CARDS[name]
    recipe, _ = build_recipe(Choices(preset=name))
    yaml_path, _ = write_files(render(recipe, out_dir=tmp_path), tmp_path)
    r = load_recipe(yaml_path)  # read back what the user gets

    assert r.name == name and r.model.path == model
    assert (r.launch.hardware, r.launch.nnodes, r.launch.n_gpus_per_node, r.launch.strategy) == (hardware, nodes, gpus, "fsdp2")
    assert r.model.method == v["method"]
    if v["method"] == "lora":
        assert (r.model.lora_rank, r.model.lora_alpha, r.model.target_modules) == (v["rank"], v["alpha"], "all-linear")
        assert r.rollout.max_model_len == v["max_model_len"] and r.rollout.max_num_seqs == 512
        assert r.rollout.max_num_batched_tokens == 1536
        assert r.data.shuffle is v["shuffle"]
    assert r.actor.lr == pytest.approx(v["lr"])
    assert r.data.train_batch_size == v["batch"]
    assert r.actor.ppo_mini_batch_size == v["mini"]
    assert r.actor.ppo_micro_batch_size_per_gpu == v["micro"]
    assert r.actor.ppo_max_token_len_per_gpu == v.get("max_tokens")
    assert (r.data.max_prompt_length, r.data.max_response_length) == (v["prompt"], v["response"])
    assert r.rollout.n == v["n"]
    assert r.rollout.name == "vllm"
    assert r.rollout.tensor_model_parallel_size == v["tp"]
    assert r.rollout.gpu_memory_utilization == pytest.approx(v["gmu"])
    assert (r.actor.use_kl_loss, r.actor.kl_loss_type) == (True, "low_var_kl")
    assert r.actor.kl_loss_coef == pytest.approx(v["kl"])
    assert r.actor.entropy_coeff == pytest.approx(v["entropy"])
    assert r.actor.param_offload and r.actor.optimizer_offload
    assert r.model.enable_gradient_checkpointing
    assert r.data.filter_overlong_prompts
    assert (r.trainer.total_epochs, r.trainer.save_freq, r.trainer.test_freq) == (v["epochs"], v["save"], v["test"])
    assert (r.data.dataset, r.reward.function, r.algorithm.name) == ("gsm8k", "gsm8k", "grpo")
