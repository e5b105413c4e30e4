"""The rollout engine interface: what the trainer needs from any generator (hf or vllm).

Engines take token ids (the trainer owns tokenization and chat templates) and return token ids,
so both engines are compared and tested on exactly the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 64
    seed: int | None = None
    logprobs: bool = True  # the engine's log-prob of each sampled token (costs vLLM ~4% of its time)


@dataclass
class Rollout:
    """Samples for a batch of prompts, grouped prompt-major: sample j of prompt i is at i * n + j.

    prompt_ids[k]     token ids of the prompt of sample k (no padding)
    response_ids[k]   generated token ids of sample k (no padding; ends with EOS if it stopped)
    logprobs[k]       engine's log-prob of each response token (optional, same length as response_ids[k])
    finished[k]       True when the sample ended with EOS, False when it hit max_new_tokens
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    finished: list[bool]
    logprobs: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)


class RolloutEngine(Protocol):
    """Colocated generator. ``sync_weights`` must make the *next* ``generate`` sample from ``model``."""

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> Rollout: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...
