"""Shared fixtures: a tiny random-weight Llama that uses the embedded model's tokenizer.

Nothing here downloads: the tokenizer comes from the embedded SmolLM2 GGUF (dequantized once into
the tunecli cache), the weights are random and seeded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def make_tiny_model(out: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny Llama (random weights, SmolLM2 tokenizer and chat template) into ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunecli.trainer.embedded import embedded_model_dir

    src = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from tunecli.trainer.embedded import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    path = SHARED / "data" / "gsm8k"
    if not (path / "test.jsonl").is_file():
        pytest.skip("../shared/data/gsm8k is not present")
    return path
