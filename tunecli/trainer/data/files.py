"""File datasets: GSM8K jsonl, verl-schema parquet, and custom jsonl/parquet with named columns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunecli.errors import TuneError
from tunecli.trainer.data.types import Example

GSM8K_ROW = '{"question": "...", "answer": "... #### 42"}'
JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false", type(None): "null"}


@dataclass
class Rows:
    """A data file's rows, and where each came from: an error names the file and the line."""

    path: Path
    field: str  # the recipe field that names the file: data.train_files or data.val_files
    rows: list[dict[str, Any]]
    lines: list[int] | None = None  # each row's line in a .jsonl file; None: a .parquet file

    def where(self, i: int) -> str:
        return f"{self.path} line {self.lines[i]}" if self.lines is not None else f"{self.path} row {i} (counting from 0)"

    def error(self, i: int, problem: str, fix: str) -> TuneError:
        return TuneError(f"{self.field}: {self.where(i)}: {problem}. Fix: {fix}", field=self.field)


def read_rows(path: str | Path, field: str) -> Rows:
    """Rows of a .jsonl or .parquet file as dicts."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TuneError(f"{field} = '{path}' does not exist. Point it at a .jsonl or .parquet file.", field=field)
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path, field)
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path, field)
    else:
        raise TuneError(f"{field} = '{path}': only .jsonl and .parquet files are read. Convert the file.", field=field)
    if not rows.rows:
        raise TuneError(f"{field} = '{path}' has no rows. Point it at a file with data in it.", field=field)
    return rows


def _jsonl_rows(path: Path, field: str) -> Rows:
    rows, lines = [], []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TuneError(f"{path}:{lineno} is not valid JSON ({e}). Fix or remove that line.", field=field) from None
                if not isinstance(row, dict):
                    raise TuneError(
                        f"{field}: {path} line {lineno} is {JSON_KINDS.get(type(row), 'a JSON value')} ({_short(row)}), "
                        f"not a JSON object. Fix: each line must be one object such as {GSM8K_ROW}; fix or remove that line.",
                        field=field,
                    )
                rows.append(row)
                lines.append(lineno)
    except UnicodeDecodeError as e:
        raise TuneError(f"{field} = '{path}' is not UTF-8 text ({e}). Save it as UTF-8.", field=field) from None
    return Rows(path, field, rows, lines)


def _parquet_rows(path: Path, field: str) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return Rows(path, field, pq.read_table(path).to_pylist())
    except (pa.ArrowException, OSError) as e:
        raise TuneError(f"{field} = '{path}' is not a readable parquet file ({e}). Write it again.", field=field) from None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def prompt_problem(value: Any) -> str | None:
    """What is wrong with a prompt (a string, or chat messages with a role and text content); None when fine."""
    if isinstance(value, str):
        return None
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return None
    if isinstance(value, list):
        return f"is {_short(value)}, not a list of chat messages ({{'role': ..., 'content': '...'}} each)"
    return f"is {_short(value)} ({type(value).__name__}), not text"


def gsm8k_answer(solution: str) -> str:
    """GSM8K's final answer: the text after '####', without thousands separators."""
    return solution.split("####")[-1].strip().replace(",", "")


def is_verl_row(row: dict[str, Any]) -> bool:
    """verl's RL parquet schema: prompt = chat messages, reward_model = {ground_truth: ...}."""
    return isinstance(row.get("prompt"), list) and isinstance(row.get("reward_model"), dict)


def verl_example(rows: Rows, i: int) -> Example:
    row = rows.rows[i]
    if not is_verl_row(row):
        raise rows.error(i, f"this row is not in verl's schema like the first one (columns: {', '.join(row)})",
                         "every row needs 'prompt' (chat messages) and 'reward_model' ({'ground_truth': ...}).")
    problem = prompt_problem(row["prompt"])
    if problem:
        raise rows.error(i, f"column 'prompt' {problem}", "fix that row or remove it.")
    extra = dict(row.get("extra_info") or {})
    extra["data_source"] = row.get("data_source")
    return Example(prompt=list(row["prompt"]), ground_truth=str(row["reward_model"].get("ground_truth")), extra=extra)


GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


def gsm8k_examples(rows: Rows) -> list[Example]:
    out = []
    for i, row in enumerate(rows.rows):
        if is_verl_row(row):
            out.append(verl_example(rows, i))
            continue
        _check_gsm8k_row(rows, i)
        # verl's gsm8k preprocessing: the question plus an instruction that fixes the answer format.
        out.append(Example(prompt=f"{row['question']} {GSM8K_INSTRUCTION}", ground_truth=gsm8k_answer(row["answer"])))
    return out


def _check_gsm8k_row(rows: Rows, i: int) -> None:
    row = rows.rows[i]
    other_columns = "fix that row or remove it, or use data.dataset=custom with data.prompt_key / data.answer_key"
    for column in ("question", "answer"):
        if column not in row:
            raise rows.error(i, f"a gsm8k row has no column '{column}' (columns: {', '.join(row) or 'none'})",
                             f"each row is {GSM8K_ROW}; {other_columns}.")
        if not isinstance(row[column], str):
            raise rows.error(i, f"column '{column}' is {_short(row[column])}, not text",
                             f"each row is {GSM8K_ROW}; fix that row or remove it.")
    if "####" not in row["answer"]:
        raise rows.error(i, f"column 'answer' has no final answer after '####' ({_short(row['answer'])})",
                         f"end each answer with '#### <number>' as GSM8K does; {other_columns}.")


def custom_examples(rows: Rows, prompt_key: str, answer_key: str) -> list[Example]:
    if is_verl_row(rows.rows[0]):
        return [verl_example(rows, i) for i in range(len(rows.rows))]
    out = []
    for i, row in enumerate(rows.rows):
        missing = [k for k in (prompt_key, answer_key) if k not in row]
        if missing:
            raise TuneError(
                f"{rows.field}: {rows.where(i)} has no column {missing[0]!r} (columns: {', '.join(row)}). Set "
                "data.prompt_key / data.answer_key to the right column names.",
                field="data.prompt_key" if missing[0] == prompt_key else "data.answer_key",
            )
        problem = prompt_problem(row[prompt_key])
        if problem:
            raise rows.error(i, f"the prompt (column {prompt_key!r}, data.prompt_key) {problem}",
                             "fix that row or remove it, or set data.prompt_key to the column that holds the prompts.")
        extra = {k: v for k, v in row.items() if k not in (prompt_key, answer_key)}
        out.append(Example(prompt=row[prompt_key], ground_truth=str(row[answer_key]), extra=extra))
    return out
