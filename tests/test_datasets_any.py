"""Any dataset through the `datasets` library (issue 12): every file format and save_to_disk folders through
the real loader, column mapping, hub datasets from the local cache only, refusals at `tune validate`
time, and `tune data gsm8k`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recipe_testutil import flat, tune
from tunecli.authoring.checks import check_recipe
from tunecli.config.io import recipe_from_dict
from tunecli.config.schema import DataConfig
from tunecli.errors import TuneError
from tunecli.trainer.data import load_splits

ROWS = [{"question": f"What is {i} + 1?", "answer": str(i + 1), "topic": f"t{i}"} for i in range(6)]


def _write(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        pacsv.write_csv(pa.Table.from_pylist(rows), path)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_each_file_format_reads_through_datasets_with_default_columns(tmp_path, suffix):
    path = _write(tmp_path / f"d{suffix}", ROWS)
    train, val = load_splits(DataConfig(dataset="custom", train_files=str(path), val_size=2), 0)
    assert [e.prompt for e in train] == [r["question"] for r in ROWS[:4]] and len(val) == 2
    # answer found by the default keys; the other columns travel with the sample for the reward.
    assert train[1].ground_truth == "2" and train[1].extra == {"topic": "t1"}


def test_save_to_disk_folders_with_and_without_splits(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "plain"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:4]),
                          "validation": datasets.Dataset.from_list(ROWS[4:])}).save_to_disk(str(tmp_path / "dict"))
    train, val = load_splits(DataConfig(dataset="custom", train_files=str(tmp_path / "plain"), val_size=1), 0)
    assert len(train) == 5 and val[0].ground_truth == "6"
    cfg = DataConfig(dataset="custom", train_files=str(tmp_path / "dict"), val_files=str(tmp_path / "dict"),
                     val_split="validation")
    train, val = load_splits(cfg, 0)
    assert len(train) == 4 and [e.ground_truth for e in val] == ["5", "6"]
    with pytest.raises(TuneError, match=r"data.val_split = 'test'.*it has train, validation.*Fix"):
        load_splits(cfg.model_copy(update={"val_split": "test"}), 0)


def test_column_mapping_verl_keys_dotted_answers_and_chat_prompts(tmp_path):
    rows = [{"msgs": [{"role": "user", "content": f"Q{i}"}], "meta": {"gold": str(i)}, "src": "x"} for i in range(3)]
    path = _write(tmp_path / "chat.parquet", rows)
    cfg = DataConfig(dataset="custom", train_files=str(path), prompt_key="msgs", answer_key="meta.gold", val_size=1)
    train, _ = load_splits(cfg, 0)
    assert train[1].prompt == [{"role": "user", "content": "Q1"}] and train[1].ground_truth == "1"
    assert train[1].extra == {"src": "x"}
    solution = _write(tmp_path / "s.jsonl", [{"problem": "P", "solution": "42"}] * 3)
    train, _ = load_splits(DataConfig(dataset="custom", train_files=str(solution), val_size=1), 0)
    assert (train[0].prompt, train[0].ground_truth) == ("P", "42")


def _recipe(tmp_path: Path, *sets: str, hardware: str = "cpu"):
    return recipe_from_dict({}, ["data.dataset=custom", "reward.function=gsm8k_flexible", f"launch.hardware={hardware}",
                                 "data.val_size=1", *sets])


@pytest.mark.parametrize("rows, sets, field, words", [
    (ROWS, ["data.prompt_key=prompt_text"], "data.prompt_key", ["no column 'prompt_text'", "columns: question, answer, topic"]),
    ([{"q": 1}] * 3, [], "data.prompt_key", ["none of the columns 'prompt', 'question', 'problem'"]),
    ([{"question": None, "answer": "1"}] * 2, [], "data.train_files", ["line 1", "is None"]),
], ids=["missing column", "no default column", "unreadable row"])
def test_bad_data_is_refused_at_validate_time(tmp_path, rows, sets, field, words):
    path = _write(tmp_path / "d.jsonl", rows)
    report = check_recipe(_recipe(tmp_path, f"data.train_files={path}", *sets))
    [error] = report.errors
    assert error.field == field and all(w in str(error) for w in words) and "Fix" in str(error), str(error)


def test_empty_split_and_unreadable_json_are_refused_at_validate_time(datasets_cache, tmp_path):
    report = check_recipe(_recipe(tmp_path, "data.train_files=openai/gsm8k", "data.val_files=openai/gsm8k",
                                  "data.subset=empty"))
    assert ["data.val_files"] == [e.field for e in report.errors] and "split 'test' has no rows" in str(report.errors[0])
    (tmp_path / "bad.json").write_text('{"question": "a", "answer": 1}\n[1, 2]\n')
    report = check_recipe(_recipe(tmp_path, f"data.train_files={tmp_path / 'bad.json'}"))
    assert report.errors and "line 2 is an array" in str(report.errors[0])


def test_first_rows_must_render_with_the_models_chat_template(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512}))
    template = ("{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversations must start with a user') }}"
                "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "</s>"}))
    rows = [{"prompt": [{"role": "assistant", "content": "hi"}], "answer": "1"}] * 3
    path = _write(tmp_path / "d.parquet", rows)
    report = check_recipe(_recipe(tmp_path, f"data.train_files={path}", f"model.path={model}"))
    assert [e.field for e in report.errors] == ["data.prompt_key"]
    assert "does not render with the chat template" in str(report.errors[0]) and "must start with a user" in str(report.errors[0])
    ok = _write(tmp_path / "ok.parquet", [{"prompt": "hi", "answer": "1"}] * 3)
    assert check_recipe(_recipe(tmp_path, f"data.train_files={ok}", f"model.path={model}")).ok


def test_offline_hub_dataset_not_in_cache_is_a_clear_error_on_cpu_and_a_warning_on_gpu(tmp_path):
    report = check_recipe(_recipe(tmp_path, "data.train_files=someone/not-cached-data"))
    [error] = report.errors
    assert error.field == "data.train_files" and "not in the local Hugging Face cache" in str(error)
    assert "hf download someone/not-cached-data --repo-type dataset" in str(error)
    gpu = check_recipe(_recipe(tmp_path, "data.train_files=someone/not-cached-data", "launch.strategy=fsdp2",
                               "trainer.device=cuda", hardware="h100"))
    assert not [e for e in gpu.errors if e.field == "data.train_files"]
    assert any("not in the local Hugging Face cache" in w for w in gpu.warnings)


def _cache_gsm8k(root: Path, subset: str, counts: dict[str, int]) -> None:
    import datasets
    from datasets.arrow_writer import ArrowWriter

    folder = root / "openai___gsm8k" / subset / "0.0.0" / "0123456789abcdef"
    folder.mkdir(parents=True)
    info = datasets.DatasetInfo(features=datasets.Features({"question": datasets.Value("string"),
                                                            "answer": datasets.Value("string")}),
                                builder_name="gsm8k", dataset_name="gsm8k", config_name=subset, version="0.0.0")
    info.splits = datasets.SplitDict(dataset_name="gsm8k")
    for split, n in counts.items():
        with ArrowWriter(path=str(folder / f"gsm8k-{split}.arrow"), features=info.features) as writer:
            for i in range(n):
                writer.write({"question": f"{split} question {i}?", "answer": f"steps\n#### {i + 1:,}"})
            count, size = writer.finalize()
        info.splits.add(datasets.SplitInfo(name=split, num_examples=count, num_bytes=size, dataset_name="gsm8k"))
    info.write_to_directory(str(folder))


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """openai/gsm8k in a local `datasets` cache, as a past download leaves it: subset main (6 train and
    2 test rows) and a made-up subset 'empty' whose test split has no rows."""
    import datasets

    root = tmp_path / "datasets-cache"
    _cache_gsm8k(root, "main", {"train": 6, "test": 2})
    _cache_gsm8k(root, "empty", {"train": 6, "test": 0})
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", root)
    return root


def test_hub_dataset_from_the_local_cache_with_subset_and_split(datasets_cache, tmp_path):
    from tunecli.authoring.defaults import Choices, build_recipe

    recipe, _ = build_recipe(Choices(dataset="openai/gsm8k", sets=["data.val_size=2"]))
    assert (recipe.data.dataset, recipe.data.train_files, recipe.data.subset) == ("gsm8k", "openai/gsm8k", "main")
    report = check_recipe(recipe)
    assert not [e for e in report.errors if e.field.startswith("data")], [str(e) for e in report.errors]
    train, val = load_splits(recipe.data, 0)
    assert len(train) == 6 and [e.ground_truth for e in val] == ["1", "2"] and "####" in train[0].prompt
    with pytest.raises(TuneError, match=r"data.split = 'validation'.*it has train, test"):
        load_splits(recipe.data.model_copy(update={"split": "validation"}), 0)


def test_tune_data_gsm8k_writes_verl_parquet_the_presets_read(tmp_path):
    src = tmp_path / "copy"
    src.mkdir()
    for split, n in (("train", 5), ("test", 3)):
        _write(src / f"{split}.jsonl", [{"question": f"Q{i}?", "answer": f"work\n#### {1000 + i:,}"} for i in range(n)])
    out = tmp_path / "data" / "gsm8k"
    result = tune("data", "gsm8k", "--from", src, "--out", out)
    assert result.exit_code == 0 and "train.parquet (5 rows)" in flat(result.output), result.output
    import pyarrow.parquet as pq

    row = pq.read_table(out / "train.parquet").to_pylist()[1]
    assert row["data_source"] == "openai/gsm8k" and row["ability"] == "math"
    assert row["prompt"] == [{"role": "user", "content": 'Q1? Let\'s think step by step and output the final answer after "####".'}]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "1001"}
    assert row["extra_info"] == {"split": "train", "index": 1, "answer": "work\n#### 1,001", "question": "Q1?"}
    train, val = load_splits(DataConfig(dataset="gsm8k", train_files=str(out / "train.parquet"),
                                        val_files=str(out / "test.parquet")), 0)
    assert len(train) == 5 and len(val) == 3 and train[1].ground_truth == "1001"
    again = tune("data", "gsm8k", "--from", src, "--out", out)
    assert again.exit_code == 1 and "--force" in flat(again.output)


def test_gsm8k_presets_say_which_command_makes_their_data(tmp_path):
    os.chdir(tmp_path)  # no data/gsm8k here
    result = tune("new", "--preset", "qwen2.5-1.5b_grpo-lora_1_h100_fsdp_vllm", "--yes", "--dry-run")
    assert result.exit_code == 0 and "tune data gsm8k --out data/gsm8k" in flat(result.output)


def test_columns_named_like_reward_arguments_stay_out_of_the_keyword_arguments(tmp_path):
    rows = [{"question": "Q", "answer": "1", "ground_truth": "other", "completion": "x", "level": 3}] * 3
    train, _ = load_splits(DataConfig(dataset="custom", train_files=str(_write(tmp_path / "d.jsonl", rows)), val_size=1), 0)
    assert train[0].extra == {"level": 3}  # reward(prompt, completion, ground_truth, **extra) cannot collide
