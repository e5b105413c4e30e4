"""`tune data gsm8k`: GSM8K as verl's RL parquet files (the shape of verl's
examples/data_preprocess/gsm8k.py), from the Hub (openai/gsm8k, subset main) or a local jsonl copy."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tunecli.data.rows import GSM8K_INSTRUCTION, gsm8k_answer
from tunecli.data.source import read_rows
from tunecli.errors import TuneError

HUB_NAME = "openai/gsm8k"
SPLITS = ("train", "test")


def verl_row(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    """One GSM8K row in verl's schema: chat prompt with the answer-format instruction, rule ground truth."""
    question, answer = row["question"], row["answer"]
    return {
        "data_source": HUB_NAME,
        "prompt": [{"role": "user", "content": f"{question} {GSM8K_INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": gsm8k_answer(answer)},
        "extra_info": {"split": split, "index": index, "answer": answer, "question": question},
    }


def _split_rows(source: str, split: str) -> list[dict[str, Any]]:
    local = Path(source).expanduser()
    found = [local / f"{split}{suffix}" for suffix in (".jsonl", ".json", ".parquet")]
    path = next((p for p in found if p.is_file()), None)
    if path is not None:  # a local copy: train.jsonl / test.jsonl (or .json / .parquet)
        rows = read_rows(path, "--from")
    else:  # the Hub, its cache, or a folder `hf download openai/gsm8k --repo-type dataset` wrote
        rows = read_rows(source, "--from", split=split, subset="main")
    for i, row in enumerate(rows.rows):
        if not isinstance(row.get("question"), str) or "####" not in str(row.get("answer", "")):
            raise rows.error(i, "not a GSM8K row (question, and an answer ending in '#### <number>')",
                             "give GSM8K's own files (openai/gsm8k).")
    return rows.rows


def write_gsm8k(out: Path, source: str = HUB_NAME, *, force: bool = False) -> dict[str, tuple[Path, int]]:
    """Write OUT/train.parquet and OUT/test.parquet; refuses to overwrite unless ``force``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    targets = {split: out / f"{split}.parquet" for split in SPLITS}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise TuneError(f"{' and '.join(existing)} already exist(s). Fix: pass --force to overwrite, or --out NEW_DIR.",
                        field="--out")
    tables = {split: [verl_row(r, split, i) for i, r in enumerate(_split_rows(source, split))] for split in SPLITS}
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, rows in tables.items():
        # A temporary file renamed into place: an interrupted run never leaves half a parquet file.
        fd, tmp = tempfile.mkstemp(prefix=f".{split}-", suffix=".parquet", dir=out)
        os.close(fd)
        try:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
            os.replace(tmp, targets[split])
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written[split] = (targets[split], len(rows))
    return written
