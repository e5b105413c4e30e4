"""A file or hub dataset in a recipe's ``data`` section -> (train, held-out) examples.

The trainer calls ``file_splits`` before it loads the model; `tune new` / `tune validate` call
``check_source`` on the first rows, so a missing column or split is refused before anything runs.
"""

from __future__ import annotations

import functools

from tunecli.data.rows import custom_examples, gsm8k_examples
from tunecli.data.source import read_rows
from tunecli.data.types import Example
from tunecli.errors import TuneError

FILE_DATASETS = ("gsm8k", "custom")
GSM8K_COMMAND = "tune data gsm8k --out data/gsm8k"  # writes the files the GSM8K presets name


def make_hint(data) -> str:
    """How to make a missing data file, when tunecli has a command for it."""
    return f", or make the GSM8K files with `{GSM8K_COMMAND}`" if data.dataset == "gsm8k" else ""


def _to_examples(data):
    if data.dataset == "gsm8k":
        return gsm8k_examples
    return functools.partial(custom_examples, prompt_key=data.prompt_key, answer_key=data.answer_key)


def source_examples(data, which: str, limit: int | None = None) -> list[Example]:
    """Examples of data.train_files ('train') or data.val_files ('val'), at most ``limit`` rows read."""
    field = "data.train_files" if which == "train" else "data.val_files"
    split = data.split if which == "train" else data.val_split
    rows = read_rows(getattr(data, field.split(".")[1]), field, split=split, subset=data.subset, limit=limit,
                     make_hint=make_hint(data))
    return _to_examples(data)(rows)


def file_splits(data) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples: data.val_files, else the last data.val_size training rows."""
    if not data.train_files:
        raise TuneError(
            f"data.dataset = '{data.dataset}' needs data.train_files ({'a hub dataset, ' if data.dataset == 'custom' else ''}"
            f"a .jsonl/.json/.csv/.parquet file or a save_to_disk folder), e.g. data.train_files=data/gsm8k/train.parquet"
            f"{make_hint(data)}.",
            field="data.train_files",
        )
    train = source_examples(data, "train")
    if data.val_files:
        return train, source_examples(data, "val")[: data.val_size]
    return hold_out_tail(train, data.val_size, data.train_files)


def hold_out_tail(train: list[Example], val_size: int, train_files: str) -> tuple[list[Example], list[Example]]:
    """No held-out file: the last ``val_size`` training rows are held out, and never trained on."""
    if len(train) <= val_size:
        raise TuneError(
            f"data.val_size = {val_size}: with no data.val_files the held-out prompts are the last {val_size} rows "
            f"of data.train_files ('{train_files}'), which has only {len(train)}, so nothing would be left to train "
            "on and held-out accuracy would be measured on training rows. Fix: lower data.val_size below "
            f"{len(train)} (e.g. {max(1, len(train) // 10)}), or give data.val_files (a separate held-out file).",
            field="data.val_size",
        )
    return train[:-val_size], train[-val_size:]
