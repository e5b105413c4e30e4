"""The data containers live in ``tunecli.data.types`` (below the trainer, so `tune new` checks data too)."""

from tunecli.data.types import Example, PromptSample

__all__ = ["Example", "PromptSample"]
