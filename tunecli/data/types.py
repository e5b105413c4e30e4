"""The data containers shared by loaders, prompt rendering and rewards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One task: the user message (or a full chat), its ground truth, and extra columns for rewards."""

    prompt: str | list[dict[str, str]]  # a user message, or chat messages (verl parquet schema)
    ground_truth: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptSample:
    """An example after the chat template: what the rollout engine receives."""

    example: Example
    text: str  # the rendered prompt, as the reward sees it
    token_ids: list[int]
