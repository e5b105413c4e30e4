"""Datasets: seeded synthetic splits, file formats, chat-template rendering, the resumable sampler."""

from __future__ import annotations

import json

import pytest

from tunecli.errors import TuneError
from tunecli.config.schema import DataConfig
from tunecli.trainer.data import PromptSampler, load_splits, render_prompts
from tunecli.trainer.data.synthetic import generate_splits
from tunecli.rewards import load_reward


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
@pytest.mark.parametrize("difficulty", [1, 3, 5])
def test_synthetic_is_seeded_heldout_and_solvable(name, difficulty):
    train, val = generate_splits(name, difficulty, 200, 32, seed=0)
    again, val_again = generate_splits(name, difficulty, 200, 32, seed=0)
    other, val_other = generate_splits(name, difficulty, 200, 32, seed=1)
    assert [e.prompt for e in train] == [e.prompt for e in again]
    assert [e.prompt for e in train] != [e.prompt for e in other]
    assert [e.prompt for e in val] == [e.prompt for e in val_other]  # held-out does not move with the seed
    assert not {e.prompt for e in val} & {e.prompt for e in train}
    assert len({e.prompt for e in val}) == len(val) == 32
    reward = load_reward(name)
    for ex in val[:10]:
        if name == "arithmetic":
            assert reward(ex.prompt, f"The answer is {ex.ground_truth}", ex.ground_truth) == 1.0
        else:
            assert int(ex.ground_truth) > 0 and ex.extra["target"] == int(ex.ground_truth)


def test_arithmetic_difficulty_grows():
    easy, _ = generate_splits("arithmetic", 1, 50, 8, 0)
    hard, _ = generate_splits("arithmetic", 5, 50, 8, 0)
    assert max(abs(int(e.ground_truth)) for e in easy) <= 18
    assert max(abs(int(e.ground_truth)) for e in hard) > 100
    assert all(e.extra["expression"].count(" ") == 4 for e in hard)  # three operands


def test_gsm8k_jsonl(tmp_path):
    rows = [{"question": f"Q{i}?", "answer": f"work\n#### {1000 + i:,}"} for i in range(5)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(dataset="gsm8k", train_files=str(tmp_path / "train.jsonl"), val_size=2)
    train, val = load_splits(cfg, 0)
    assert len(train) == 3 and len(val) == 2  # no val file: the tail is held out
    assert train[0].ground_truth == "1000" and "####" in train[0].prompt


def test_real_gsm8k_file(gsm8k_dir):
    cfg = DataConfig(dataset="gsm8k", train_files=str(gsm8k_dir / "test.jsonl"), val_files=str(gsm8k_dir / "test.jsonl"), val_size=4)
    train, val = load_splits(cfg, 0)
    assert len(val) == 4 and all(e.ground_truth.lstrip("-").replace(".", "").isdigit() for e in train[:50])


def test_verl_parquet_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": f"Q{i}"}], "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": str(i)}, "extra_info": {"split": "train", "index": i}}
        for i in range(4)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "test.parquet")
    for dataset in ("gsm8k", "custom"):
        cfg = DataConfig(dataset=dataset, train_files=str(tmp_path / "train.parquet"), val_files=str(tmp_path / "test.parquet"))
        train, val = load_splits(cfg, 0)
        assert train[1].prompt == [{"role": "user", "content": "Q1"}] and train[1].ground_truth == "1"
        assert train[1].extra["index"] == 1 and train[1].extra["data_source"] == "openai/gsm8k" and len(val) == 2


def test_custom_jsonl_columns(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"q": "hi", "a": 3, "topic": "x"}\n{"q": "yo", "a": 4, "topic": "y"}\n')
    cfg = DataConfig(dataset="custom", train_files=str(tmp_path / "d.jsonl"), prompt_key="q", answer_key="a", val_size=1)
    train, val = load_splits(cfg, 0)
    assert train[0].prompt == "hi" and train[0].ground_truth == "3" and train[0].extra == {"topic": "x"}
    bad = DataConfig(dataset="custom", train_files=str(tmp_path / "d.jsonl"), prompt_key="question")
    with pytest.raises(TuneError, match="data.prompt_key"):
        load_splits(bad, 0)


def test_file_errors(tmp_path):
    with pytest.raises(TuneError, match="needs data.train_files"):
        load_splits(DataConfig(dataset="gsm8k"), 0)
    with pytest.raises(TuneError, match="does not exist"):
        load_splits(DataConfig(dataset="custom", train_files=str(tmp_path / "none.jsonl")), 0)
    with pytest.raises(TuneError, match="did you mean 'countdown'"):
        load_splits(DataConfig(dataset="countdwn"), 0)


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


def test_render_with_chat_template_and_filter(tokenizer):
    train, _ = generate_splits("arithmetic", 2, 20, 4, 0)
    samples = render_prompts(train, tokenizer, system_prompt="Answer briefly.", max_prompt_length=128, filter_overlong=True)
    assert samples[0].text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")
    assert samples[0].text.endswith("<|im_start|>assistant\n")
    assert samples[0].token_ids == tokenizer(samples[0].text, add_special_tokens=False)["input_ids"]
    long = train[:3] + [type(train[0])(prompt="word " * 200, ground_truth="0")]
    assert len(render_prompts(long, tokenizer, system_prompt=None, max_prompt_length=64, filter_overlong=True)) == 3
    with pytest.raises(TuneError, match="filter_overlong_prompts"):
        render_prompts(long, tokenizer, system_prompt=None, max_prompt_length=64, filter_overlong=False)


def test_sampler_resumes_exactly(tokenizer):
    train, _ = generate_splits("arithmetic", 2, 10, 4, 0)
    samples = render_prompts(train, tokenizer, system_prompt=None, max_prompt_length=128, filter_overlong=True)
    a = PromptSampler(samples, 3, seed=7)
    seen = [[s.text for s in a.next_batch()] for _ in range(2)]
    state = a.state_dict()
    rest = [[s.text for s in a.next_batch()] for _ in range(5)]  # crosses an epoch boundary (3 per epoch)
    b = PromptSampler(samples, 3, seed=7)
    b.load_state_dict(state)
    assert [[s.text for s in b.next_batch()] for _ in range(5)] == rest
    assert seen[0] != rest[0]
    with pytest.raises(TuneError, match="train_batch_size"):
        PromptSampler(samples, 11, seed=0)
