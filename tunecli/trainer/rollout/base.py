"""The rollout engine interface: what the trainer needs from any generator (hf or vllm).

Engines take token ids (the trainer owns tokenization and chat templates) and return token ids,
so both engines are compared and tested on exactly the same inputs. Both are built from the same
``EngineSettings`` and receive the policy's weights as a ``weights.WeightStream`` in the format
they ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tunecli.config.schema import Recipe, RolloutConfig

if TYPE_CHECKING:
    from tunecli.trainer.weights import WeightFormat, WeightStream


@dataclass(frozen=True)
class EngineSettings:
    """What an engine is built from: the recipe's rollout section and the facts of the model and run."""

    rollout: RolloutConfig
    model_path: str  # resolved local directory or hub id: what the engine loads
    trust_remote_code: bool
    lora_rank: int | None  # None: full fine-tuning
    seed: int
    max_model_len: int  # prompt + response tokens
    device: str  # trainer.device: auto, cpu or cuda
    revision: str | None = None  # model.revision: the hub revision of model_path (null: main)

    @classmethod
    def from_recipe(cls, recipe: Recipe, model_path: str) -> EngineSettings:
        model = recipe.model
        return cls(
            rollout=recipe.rollout,
            model_path=model_path,
            trust_remote_code=model.trust_remote_code,
            lora_rank=model.lora_rank if model.method == "lora" else None,
            seed=recipe.trainer.seed,
            max_model_len=recipe.max_model_len,
            device=recipe.trainer.device,
            revision=model.revision,
        )


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
    """Samples for a batch of prompts, grouped prompt-major: sample j of prompt i is at i * group_size + j.

    prompt_ids[k]     token ids of the prompt of sample k (no padding)
    response_ids[k]   generated token ids of sample k (no padding; ends with EOS if it stopped)
    finished[k]       True when the sample ended with EOS, False when it hit max_new_tokens
    group_size        samples per prompt (``SamplingSettings.n``): the GRPO group
    logprobs[k]       engine's log-prob of each response token (optional, same length as response_ids[k])
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    finished: list[bool]
    group_size: int
    logprobs: list[list[float]] | None = None

    def __post_init__(self) -> None:
        if self.group_size < 1 or len(self.response_ids) % self.group_size:
            raise ValueError(f"{len(self.response_ids)} samples do not form whole groups of {self.group_size}")

    def __len__(self) -> int:
        return len(self.response_ids)

    def group_of(self, k: int) -> int:
        """The group (prompt) of sample k."""
        return k // self.group_size

    @property
    def num_groups(self) -> int:
        return len(self) // self.group_size

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)


class RolloutEngine(Protocol):
    """Colocated generator. After ``update_weights(stream)`` the *next* ``generate`` samples from the
    weights streamed; ``weight_format`` is the stream it wants, None when it needs none (it
    generates on the live policy)."""

    weight_format: WeightFormat | None

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> Rollout: ...

    def update_weights(self, stream: WeightStream) -> None: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...
