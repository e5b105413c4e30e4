"""An example as chat messages: the one rule shared by the trainer's prompt rendering and the check that
the first rows render at `tune new` (the system prompt, and templates without a system role)."""

from __future__ import annotations

from tunecli.data.types import Example


def chat_messages(example: Example, system_prompt: str | None) -> list[dict[str, str]]:
    messages = list(example.prompt) if isinstance(example.prompt, list) else [{"role": "user", "content": example.prompt}]
    if system_prompt and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def merge_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system message folded into the first user turn, for templates without a system role (Gemma 2)."""
    if not messages or messages[0].get("role") != "system" or len(messages) < 2:
        return [{"role": "user", "content": m["content"]} if m.get("role") == "system" else m for m in messages]
    first = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return [first, *messages[2:]]
