"""Training data: load examples, render prompts with the chat template, and hand out batches.

``load_splits(recipe)`` -> (train, held-out) examples; ``render_prompts`` applies the tokenizer's
chat template and filters (or refuses) over-long prompts; ``PromptSampler`` yields seeded batches
and checkpoints its exact position.
"""

from __future__ import annotations

import random
from typing import Any

from tunecli.data.chat import chat_messages, merge_system
from tunecli.data.splits import FILE_DATASETS, file_splits, hold_out_tail
from tunecli.data.types import Example, PromptSample
from tunecli.errors import TuneError, did_you_mean
from tunecli.trainer.data.synthetic import GENERATORS, generate_splits

__all__ = ["Example", "PromptSample", "PromptSampler", "hold_out_tail", "load_splits", "render_prompts"]

DATASETS = [*GENERATORS, *FILE_DATASETS]


def load_splits(data, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples for the recipe's ``data`` section."""
    name = data.dataset
    if name in GENERATORS:
        return generate_splits(name, data.difficulty, data.train_size, data.val_size, seed)
    if name not in FILE_DATASETS:
        raise TuneError(
            f"data.dataset = '{name}' is not known{did_you_mean(name, DATASETS)}. Use one of {', '.join(DATASETS)}.",
            field="data.dataset",
        )
    return file_splits(data)


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt as the model sees it: its chat template (system merged where the template refuses a
    system role), or plain paragraphs for a base model without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m["content"] for m in messages) + "\n\n"
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        if messages[0].get("role") != "system":
            raise
        return tokenizer.apply_chat_template(merge_system(messages), tokenize=False, add_generation_prompt=True)


def render_prompts(
    examples: list[Example],
    tokenizer: Any,
    *,
    system_prompt: str | None,
    max_prompt_length: int,
    filter_overlong: bool,
    split: str = "train",
) -> list[PromptSample]:
    """Chat-template each example; over-long prompts are dropped (filter) or refused (TuneError)."""
    samples = []
    for ex in examples:
        text = prompt_text(tokenizer, chat_messages(ex, system_prompt))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length:
            if filter_overlong:
                continue
            raise TuneError(
                f"A {split} prompt is {len(ids)} tokens, over data.max_prompt_length={max_prompt_length}. Raise "
                "data.max_prompt_length, or set data.filter_overlong_prompts=true to drop such prompts.",
                field="data.max_prompt_length",
            )
        samples.append(PromptSample(example=ex, text=text, token_ids=ids))
    if not samples:
        raise TuneError(
            f"Every {split} prompt is longer than data.max_prompt_length={max_prompt_length} tokens. Raise it.",
            field="data.max_prompt_length",
        )
    return samples


class PromptSampler:
    """Seeded epochs over the training prompts; ``state_dict`` pins the exact next batch.

    The order of epoch e depends only on (seed, e), so resuming needs just (epoch, position).
    """

    def __init__(self, samples: list[PromptSample], batch_size: int, seed: int, shuffle: bool = True):
        if batch_size > len(samples):
            raise TuneError(
                f"data.train_batch_size={batch_size} is larger than the {len(samples)} training prompts. Lower it "
                "or add data (data.train_size for synthetic datasets).",
                field="data.train_batch_size",
            )
        self.samples, self.batch_size, self.seed, self.shuffle = samples, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.samples) // self.batch_size  # the ragged tail is dropped, as verl does

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples)))
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    def next_batch(self) -> list[PromptSample]:
        if self.position + self.batch_size > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        idx = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return [self.samples[i] for i in idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
