"""Rollout engines behind one interface (``base.RolloutEngine``); ``make_engine`` picks one by name."""

from __future__ import annotations

from tunecli.trainer.rollout.base import Rollout, RolloutEngine, SamplingSettings

__all__ = ["Rollout", "RolloutEngine", "SamplingSettings", "make_engine"]


def make_engine(recipe, policy, tokenizer, model_path: str) -> RolloutEngine:
    """``hf`` generates with transformers (on the live policy, or a copy in rollout.dtype); ``vllm``
    (imported lazily: heavy) runs a colocated engine."""
    name = recipe.rollout.name
    if name == "hf":
        from tunecli.trainer.policy import DTYPES
        from tunecli.trainer.rollout.hf import HFEngine

        dtype = None if recipe.rollout.dtype == "auto" else DTYPES[recipe.rollout.dtype]
        return HFEngine(
            policy, tokenizer, max_num_seqs=recipe.rollout.max_num_seqs, dtype=dtype,
            model_path=model_path, trust_remote_code=recipe.model.trust_remote_code,
        )
    if name == "vllm":
        from tunecli.trainer.rollout.vllm import VLLMEngine

        return VLLMEngine(recipe, model_path)
    raise ValueError(f"unknown rollout engine {name!r}")  # the schema's Literal makes this unreachable
