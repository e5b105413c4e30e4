"""Rollout engines behind one interface (``base.RolloutEngine``); ``make_engine`` picks one by name."""

from __future__ import annotations

import torch

from tunecli.trainer.rollout.base import EngineSettings, Rollout, RolloutEngine, SamplingSettings
from tunecli.trainer.rollout.hf import HFEngine
from tunecli.trainer.weights import weight_stream

__all__ = ["EngineSettings", "Rollout", "RolloutEngine", "SamplingSettings", "make_engine"]


def make_engine(settings: EngineSettings, policy: torch.nn.Module, tokenizer) -> RolloutEngine:
    """``hf`` generates with transformers (on the live policy, or a copy in rollout.dtype); ``vllm``
    (imported lazily: heavy) runs a colocated engine. Call on every rank (FSDP2 gathers)."""
    name = settings.rollout.name
    if name == "hf":
        engine = HFEngine(settings, policy, tokenizer)
        if engine.weight_format is not None:
            # Its copy comes from model.path; start it from the policy, which may already differ from the files.
            engine.update_weights(weight_stream(policy, engine.weight_format))
        return engine
    if name == "vllm":
        from tunecli.trainer.rollout.vllm import VLLMEngine

        return VLLMEngine(settings)  # from the model's files, which the freshly loaded policy equals
    raise ValueError(f"unknown rollout engine {name!r}")  # the schema's Literal makes this unreachable
