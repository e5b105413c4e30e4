"""File datasets: GSM8K jsonl, verl-schema parquet, and custom jsonl/parquet with named columns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunecli.errors import TuneError
from tunecli.data.types import Example

GSM8K_ROW = '{"question": "...", "answer": "... #### 42"}'
JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false", type(None): "null"}


@dataclass
class Rows:
    """A data source's rows, and where each came from: an error names the file and the line or row."""

    path: Path | str  # a local file or folder, or a hub dataset name
    field: str  # the recipe field that names it: data.train_files or data.val_files
    rows: list[dict[str, Any]]
    lines: list[int] | None = None  # each row's line in a .jsonl file; None: counted as rows

    def where(self, i: int) -> str:
        if self.lines is None and Path(self.path).suffix.lower() == ".jsonl" and Path(self.path).is_file():
            self.lines = _row_lines(Path(self.path))  # read by `datasets`: the lines only when an error needs them
        return f"{self.path} line {self.lines[i]}" if self.lines is not None else f"{self.path} row {i} (counting from 0)"

    def error(self, i: int, problem: str, fix: str) -> TuneError:
        return TuneError(f"{self.field}: {self.where(i)}: {problem}. Fix: {fix}", field=self.field)


def _row_lines(path: Path) -> list[int]:
    with path.open(encoding="utf-8", errors="replace") as f:
        return [n for n, line in enumerate(f, 1) if line.strip()]


def jsonl_problem(path: Path, field: str) -> None:
    """Raise the TuneError that names the first line of a .json(l) file that is not one JSON object."""
    _jsonl_rows(path, field)


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
    # The other columns travel with the sample (a reward gets them as keyword arguments); extra_info's
    # entries at the top, as verl's reward functions receive them.
    extra = {k: v for k, v in row.items() if k not in ("prompt", "reward_model", "extra_info")}
    extra.update(row.get("extra_info") or {})
    extra["data_source"] = row.get("data_source")
    return Example(prompt=list(row["prompt"]), ground_truth=str(row["reward_model"].get("ground_truth")),
                   extra=reward_kwargs(extra))


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
    # `datasets` gives a column that a row lacks as None: both read as "no column" here.
    present = [k for k, v in row.items() if v is not None]
    for column in ("question", "answer"):
        if row.get(column) is None:
            raise rows.error(i, f"a gsm8k row has no column '{column}' (columns: {', '.join(present) or 'none'})",
                             f"each row is {GSM8K_ROW}; {other_columns}.")
        if not isinstance(row[column], str):
            raise rows.error(i, f"column '{column}' is {_short(row[column])}, not text",
                             f"each row is {GSM8K_ROW}; fix that row or remove it.")
    if "####" not in row["answer"]:
        raise rows.error(i, f"column 'answer' has no final answer after '####' ({_short(row['answer'])})",
                         f"end each answer with '#### <number>' as GSM8K does; {other_columns}.")


# A reward is called as reward(prompt, completion, ground_truth, **extra): columns with those names stay out.
REWARD_ARGUMENTS = ("prompt", "completion", "ground_truth")


def reward_kwargs(columns: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in columns.items() if k not in REWARD_ARGUMENTS}


# verl's names first: data.prompt_key defaults to 'prompt'; the ground truth to reward_model.ground_truth.
PROMPT_KEYS = ("prompt", "question", "problem")
ANSWER_KEYS = ("reward_model.ground_truth", "answer", "solution", "ground_truth")


def column(row: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) of a column; a dotted key reads into a struct column (reward_model.ground_truth)."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def pick_keys(rows: Rows, prompt_key: str | None, answer_key: str | None) -> tuple[str, str]:
    """The prompt and answer columns: the recipe's, or the first default the first row has."""
    first = rows.rows[0]
    found = {}
    for field, given, defaults in (("data.prompt_key", prompt_key, PROMPT_KEYS), ("data.answer_key", answer_key, ANSWER_KEYS)):
        keys = (given,) if given else defaults
        key = next((k for k in keys if column(first, k)[0]), None)
        if key is None:
            what = f"no column {given!r}" if given else f"none of the columns {', '.join(map(repr, defaults))}"
            raise TuneError(f"{rows.field}: {rows.where(0)} has {what} (columns: {', '.join(first)}). Fix: set {field} "
                            "to the column that holds the " + ("prompts." if field == "data.prompt_key" else "ground truth."),
                            field=field)
        found[field] = key
    return found["data.prompt_key"], found["data.answer_key"]


def custom_examples(rows: Rows, prompt_key: str | None, answer_key: str | None) -> list[Example]:
    if is_verl_row(rows.rows[0]) and prompt_key in (None, "prompt") and answer_key in (None, ANSWER_KEYS[0]):
        return [verl_example(rows, i) for i in range(len(rows.rows))]
    prompt_key, answer_key = pick_keys(rows, prompt_key, answer_key)
    top_answer = answer_key.split(".", 1)[0]
    out = []
    for i, row in enumerate(rows.rows):
        for key, field in ((prompt_key, "data.prompt_key"), (answer_key, "data.answer_key")):
            if not column(row, key)[0]:
                raise TuneError(
                    f"{rows.field}: {rows.where(i)} has no column {key!r} (columns: {', '.join(row)}). Set "
                    "data.prompt_key / data.answer_key to the right column names.", field=field)
        problem = prompt_problem(row[prompt_key])
        if problem:
            raise rows.error(i, f"the prompt (column {prompt_key!r}, data.prompt_key) {problem}",
                             "fix that row or remove it, or set data.prompt_key to the column that holds the prompts.")
        extra = reward_kwargs({k: v for k, v in row.items() if k not in (prompt_key, top_answer)})
        out.append(Example(prompt=row[prompt_key], ground_truth=str(column(row, answer_key)[1]), extra=extra))
    return out
