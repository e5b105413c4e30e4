"""The data checks of `tune new` / `tune validate`: the source opens, the split exists, the columns are
there, and the first rows render with the model's chat template, all before anything runs.

The template is rendered the way transformers renders it (a sandboxed jinja2 environment), read from
the model's tokenizer_config.json in its directory or the local HF cache; where neither is here the
render check is skipped (the trainer renders every prompt before the first step anyway).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tunecli.catalog import load_catalog
from tunecli.data.chat import chat_messages, merge_system
from tunecli.data.source import NotHere
from tunecli.data.splits import source_examples
from tunecli.data.types import Example
from tunecli.errors import TuneError, field_error

CHECK_ROWS = 1000  # rows read and mapped at tune new (the trainer checks every row before the model loads)
RENDER_ROWS = 3  # rows rendered with the chat template


def data_problems(recipe, hw_kind: str, warnings: list[str]) -> Iterator[TuneError]:
    d = recipe.data
    entry = load_catalog().find("datasets", d.dataset)
    if entry is None:
        yield field_error("data.dataset", d.dataset, "unknown dataset",
                          f"use one of {', '.join(load_catalog().names('datasets'))}.")
        return
    if entry.kind != "file":
        return
    if not d.train_files:
        yield field_error("data.train_files", None, f"dataset {d.dataset} reads a file or hub dataset",
                          "pass --dataset path/to/train.jsonl (or org/name) or --set data.train_files=PATH.")
        return
    unseen = False
    for which in ("train", "val"):
        if which == "val" and (not d.val_files or (d.val_files == d.train_files and unseen)):
            continue
        try:
            examples = source_examples(d, which, limit=CHECK_ROWS)
        except NotHere as e:
            unseen = True  # the same source as held-out data: said once
            if hw_kind == "cpu":  # a CPU recipe runs on this machine
                yield e
            else:
                warnings.append(f"{e} This is a GPU recipe: make sure the data is there where it runs.")
            continue
        except TuneError as e:
            yield e
            continue
        yield from render_problems(recipe, examples[:RENDER_ROWS], f"data.{which}_files")


def render_problems(recipe, examples: list[Example], field: str) -> Iterator[TuneError]:
    template = chat_template(recipe.model.path, recipe.model.revision)
    if template is None:
        return
    source, tokens = template
    for i, example in enumerate(examples):
        messages = chat_messages(example, recipe.data.system_prompt)
        try:
            render_chat(source, tokens, messages)
        except Exception as e:  # jinja2's TemplateError, or a template that trips on the row's values
            yield TuneError(
                f"{field}: row {i} (counting from 0) does not render with the chat template of model.path "
                f"'{recipe.model.path}' ({type(e).__name__}: {e}). Fix: give prompts as text or as chat messages "
                "[{'role': 'user', 'content': '...'}] (data.prompt_key), or a model whose template takes them.",
                field="data.prompt_key",
            )
            return


def render_chat(source: str, tokens: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """The prompt text as transformers' apply_chat_template writes it; a template without a system role
    gets the system prompt merged into the first user turn (as the trainer does)."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
    compiled = env.from_string(source)
    try:
        return compiled.render(messages=messages, add_generation_prompt=True, **tokens)
    except TemplateError:
        if messages[0].get("role") != "system":
            raise
        return compiled.render(messages=merge_system(messages), add_generation_prompt=True, **tokens)


def chat_template(model_path: str, revision: str | None) -> tuple[str, dict[str, Any]] | None:
    """(template source, special tokens) from tokenizer_config.json of a local directory or the HF cache."""
    config = _tokenizer_file(model_path, revision, "tokenizer_config.json")
    if config is None:
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    source = data.get("chat_template")
    jinja = _tokenizer_file(model_path, revision, "chat_template.jinja")
    if jinja is not None:
        source = jinja.read_text()
    if isinstance(source, list):  # named templates: the default one
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if not isinstance(source, str):
        return None
    tokens = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in data.items() if k.endswith("_token")}
    return source, tokens


def _tokenizer_file(model_path: str, revision: str | None, name: str) -> Path | None:
    local = Path(model_path).expanduser()
    if local.is_dir():
        return local / name if (local / name).is_file() else None
    from tunecli.catalog.hub import cached_file

    entry = load_catalog().model_by_path(model_path)
    return cached_file(entry.hf_id if entry and entry.hf_id and not entry.embedded else model_path, name, revision)
