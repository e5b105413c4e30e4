"""File datasets: GSM8K jsonl, verl-schema parquet, and custom jsonl/parquet with named columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunecli.errors import TuneError
from tunecli.trainer.data.types import Example


def read_rows(path: str | Path, field: str) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .parquet file as dicts."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TuneError(f"{field} = '{path}' does not exist. Point it at a .jsonl or .parquet file.", field=field)
    if path.suffix == ".jsonl":
        rows = []
        with path.open() as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise TuneError(f"{path}:{lineno} is not valid JSON ({e}). Fix or remove that line.", field=field) from None
        return rows
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise TuneError(f"{field} = '{path}': only .jsonl and .parquet files are read. Convert the file.", field=field)


def gsm8k_answer(solution: str) -> str:
    """GSM8K's final answer: the text after '####', without thousands separators."""
    return solution.split("####")[-1].strip().replace(",", "")


def is_verl_row(row: dict[str, Any]) -> bool:
    """verl's RL parquet schema: prompt = chat messages, reward_model = {ground_truth: ...}."""
    return isinstance(row.get("prompt"), list) and isinstance(row.get("reward_model"), dict)


def verl_example(row: dict[str, Any]) -> Example:
    extra = dict(row.get("extra_info") or {})
    extra["data_source"] = row.get("data_source")
    return Example(prompt=list(row["prompt"]), ground_truth=str(row["reward_model"].get("ground_truth")), extra=extra)


GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


def gsm8k_examples(rows: list[dict[str, Any]]) -> list[Example]:
    out = []
    for row in rows:
        if is_verl_row(row):
            out.append(verl_example(row))
        else:
            # verl's gsm8k preprocessing: the question plus an instruction that fixes the answer format.
            out.append(Example(prompt=f"{row['question']} {GSM8K_INSTRUCTION}", ground_truth=gsm8k_answer(row["answer"])))
    return out


def custom_examples(rows: list[dict[str, Any]], prompt_key: str, answer_key: str, field: str) -> list[Example]:
    if rows and is_verl_row(rows[0]):
        return [verl_example(r) for r in rows]
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in (prompt_key, answer_key) if k not in row]
        if missing:
            raise TuneError(
                f"{field}: row {i} has no column {missing[0]!r} (columns: {', '.join(row)}). Set data.prompt_key / "
                "data.answer_key to the right column names.",
                field="data.prompt_key" if missing[0] == prompt_key else "data.answer_key",
            )
        extra = {k: v for k, v in row.items() if k not in (prompt_key, answer_key)}
        out.append(Example(prompt=row[prompt_key], ground_truth=str(row[answer_key]), extra=extra))
    return out
