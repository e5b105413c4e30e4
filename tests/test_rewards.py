"""Reward functions: the catalogue's rules and the custom-file contract."""

from __future__ import annotations

import pytest

from tunecli.errors import TuneError
from tunecli.rewards import RewardError, load_reward


@pytest.mark.parametrize(
    "completion, expected",
    [("11", 1.0), ("The answer is 11.", 1.0), ("4 + 7 = 11", 1.0), ("1,1", 0.0), ("12", 0.0), ("eleven", 0.0), ("11 or 12", 0.0)],
)
def test_arithmetic_last_number(completion, expected):
    assert load_reward("arithmetic")("What is 4 + 7?", completion, "11") == expected


def test_arithmetic_negative_and_float_forms():
    r = load_reward("arithmetic")
    assert r("", "-3", "-3") == 1.0 and r("", "It is 5.0", "5") == 1.0 and r("", "3", "-3") == 0.0


def test_gsm8k_strict_and_flexible():
    strict, flexible = load_reward("gsm8k"), load_reward("gsm8k_flexible")
    assert strict("", "She pays 3 * 4 = 12.\n#### 1,200", "1200") == 1.0
    assert strict("", "The answer is 1200", "1200") == 0.0  # no '####'
    assert strict("", "#### 1100", "1200") == 0.0
    assert load_reward("gsm8k", format_score=0.1)("", "#### 1100", "1200") == 0.1
    assert flexible("", "The answer is 1,200.", "1200") == 1.0


def test_countdown_rules():
    r = load_reward("countdown")
    nums = {"numbers": [3, 5, 7]}
    assert r("", "<answer>(7 - 5) * 3</answer>", "6", **nums) == 1.0
    assert r("", "<answer>7 - 5 + 3</answer>", "6", **nums) == 0.1  # wrong value: format score
    assert r("", "<answer>7 * 7 - 43</answer>", "6", **nums) == 0.1  # numbers not allowed
    assert r("", "<answer>__import__('os')</answer>", "6", **nums) == 0.1  # not arithmetic
    assert r("", "(7 - 5) * 3", "6", **nums) == 0.0  # no tags


def test_format_reward_needs_pattern():
    assert load_reward("format", format_pattern=r"<answer>.*</answer>")("", "x <answer>1</answer>", "1") == 1.0
    assert load_reward("format", format_pattern=r"^\d+$")("", "a 1", "1") == 0.0
    with pytest.raises(TuneError, match="format_pattern"):
        load_reward("format")


def test_unknown_reward_did_you_mean():
    with pytest.raises(TuneError, match="did you mean 'arithmetic'"):
        load_reward("arithmetc")


def test_custom_reward_gets_extra_columns_and_kwargs(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text(
        "def score(prompt, completion, ground_truth, **kwargs):\n"
        "    return kwargs['bonus'] + (1.0 if completion == ground_truth else 0.0) + len(kwargs.get('tags', []))\n"
    )
    r = load_reward(f"{f}:score", bonus=0.5)
    assert r("p", "42", "42", tags=["a", "b"]) == 3.5
    assert r("p", "41", "42", bonus=0.0) == 0.0  # dataset columns override recipe kwargs


def test_custom_reward_exception_reports_the_sample(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("def score(prompt, completion, ground_truth, **kw):\n    return 1 / 0\n")
    with pytest.raises(RewardError) as info:
        load_reward(f"{f}:score")("What is 2 + 2?", "four", "4")
    msg = str(info.value)
    assert "ZeroDivisionError" in msg and "four" in msg and "What is 2 + 2?" in msg


def test_custom_reward_non_float_is_an_error(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("def score(prompt, completion, ground_truth, **kw):\n    return 'yes'\n")
    with pytest.raises(RewardError, match="completion='c'"):
        load_reward(f"{f}:score")("p", "c", "g")


def test_custom_reward_missing_file_or_function(tmp_path):
    with pytest.raises(TuneError, match="does not exist"):
        load_reward(f"{tmp_path}/nope.py:f")
    f = tmp_path / "r.py"
    f.write_text("def scores(prompt, completion, ground_truth, **kw):\n    return 0.0\n")
    with pytest.raises(TuneError, match="did you mean 'scores'"):
        load_reward(f"{f}:score")
