"""The three reward contracts (tunecli, TRL, verl), told apart by signature: read with ast by the
checks (nothing imported), with inspect by the loader; weighted sets; the math reward; trackers' check."""

from __future__ import annotations

import importlib.util

import pytest

from tunecli.errors import TuneError
from tunecli.rewards import RewardError, RewardInput, load_reward, load_rewards, reward_problems
from tunecli.rewards.builtin import last_boxed, math_boxed

# Every file also writes a marker when imported: a check must never import it.
MARKER = "import pathlib\npathlib.Path(__file__).with_suffix('.imported').touch()\n"
TRL = MARKER + "def fmt(completions, **kwargs):\n    return [1.0 if 'x' in c else 0.0 for c in completions]\n"
TRL_CHAT = MARKER + (
    "def fmt(prompts, completions, ground_truth, **kwargs):\n"
    "    assert prompts[0][-1]['role'] == 'user'\n"
    "    return [1.0 if c[0]['content'] == g else 0.0 for c, g in zip(completions, ground_truth)]\n"
)
VERL = MARKER + "def compute_score(data_source, solution_str, ground_truth, extra_info):\n    return float(solution_str == ground_truth)\n"
VERL_DICT = MARKER + "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return {'score': 0.5 if data_source == 'gsm8k' else 0.25, 'acc': 1}\n"


def write(tmp_path, text, name="r.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, function, contract", [
    (TRL, "fmt", "trl"), (TRL_CHAT, "fmt", "trl"), (VERL, "compute_score", "verl"),
    (VERL_DICT, "compute_score", "verl"),
    (MARKER + "def r(prompt, completion, ground_truth, **kw):\n    return 1.0\n", "r", "tunecli"),
])
def test_each_contract_passes_the_static_check_without_import_and_loads(tmp_path, text, function, contract):
    path = write(tmp_path, text)
    assert reward_problems(f"{path}:{function}", None) == []
    assert not path.with_suffix(".imported").exists()  # checked with ast only
    assert load_reward(f"{path}:{function}").contract == contract
    assert path.with_suffix(".imported").exists()  # a real run imports it


@pytest.mark.parametrize("signature, problem", [
    ("compute_score(data_source, solution_str, ground_truth, extra_info, step)", "step are not among"),
    ("compute_score(data_source, solution_str, /, ground_truth)", "no keyword argument data_source, solution_str"),
    ("reward(prompt, completion)", "does not accept (prompt, completion, ground_truth)"),
    ("reward(completions, /, **kw)", "no keyword argument completions"),
])
def test_a_signature_that_cannot_bind_is_refused_statically_and_at_load(tmp_path, signature, problem):
    path = write(tmp_path, MARKER + f"def {signature}:\n    return 0.0\n")
    text = f"{path}:{signature.split('(')[0]}"
    problems = reward_problems(text, None)
    assert len(problems) == 1 and problem in str(problems[0]) and "Fix: define it as" in str(problems[0])
    assert not path.with_suffix(".imported").exists()
    with pytest.raises(TuneError, match="reward.function"):
        load_reward(text)


def test_trl_reward_is_called_once_per_batch_with_strings_or_chat_messages(tmp_path):
    reward = load_reward(f"{write(tmp_path, TRL)}:fmt")
    samples = [RewardInput("rendered", c, "1", raw_prompt="raw") for c in ("x", "y", "xx")]
    assert reward.score(samples) == [1.0, 0.0, 1.0]
    chat = load_reward(f"{write(tmp_path, TRL_CHAT, 'chat.py')}:fmt")
    messages = [{"role": "user", "content": "2 + 2?"}]
    samples = [RewardInput("rendered", c, "4", messages=messages) for c in ("4", "5")]
    assert chat.score(samples) == [1.0, 0.0]


def test_verl_reward_gets_data_source_and_extra_info_and_may_return_a_dict(tmp_path):
    reward = load_reward(f"{write(tmp_path, VERL_DICT)}:compute_score")
    assert reward("p", "c", "g", data_source="gsm8k", index=3) == 0.5
    assert reward("p", "c", "g", data_source="math") == 0.25
    strict = load_reward(f"{write(tmp_path, VERL, 'v.py')}:compute_score")
    assert strict("p", "42", "42", index=1) == 1.0
    bad = write(tmp_path, "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return {'acc': 1}\n", "bad.py")
    with pytest.raises(RewardError, match="without a 'score' key"):
        load_reward(f"{bad}:compute_score")("p", "c", "g")


@pytest.mark.parametrize("body, expected", [
    ("return None", "returned a non-number: None"),
    ("return float('nan')", "returned a non-finite number: nan"),
    ("raise ValueError('boom')", "failed with ValueError: boom"),
])
def test_faults_outside_trl_name_function_sample_and_value(tmp_path, body, expected):
    path = write(tmp_path, f"def r(prompt, completion, ground_truth, **kw):\n    {body}\n")
    with pytest.raises(RewardError) as info:
        load_reward(f"{path}:r")("What is 2 + 2?", "four", "4")
    msg = str(info.value)
    assert expected in msg and f"{path}:r" in msg and "completion='four'" in msg


def test_trl_none_is_not_applicable_but_nan_or_a_short_list_is_an_error(tmp_path):
    path = write(tmp_path, "def f(completions, **kw):\n    return [None if c == 'skip' else (float('nan') if c == 'nan' else 1.0) for c in completions][:kw.get('cut', [9])[0]]\n")
    reward = load_reward(f"{path}:f")
    assert reward.score([RewardInput("p", "skip", "g"), RewardInput("p", "ok", "g")]) == [None, 1.0]
    with pytest.raises(RewardError, match="returned a non-finite number: nan.*completion='nan'"):
        reward.score([RewardInput("p", "ok", "g"), RewardInput("p", "nan", "g")])
    with pytest.raises(RewardError, match="one float \\(or None\\) per completion"):
        reward.score([RewardInput("p", "ok", "g", {"cut": 1}), RewardInput("p", "ok", "g", {"cut": 1})])


def test_trl_batch_call_over_timeout_s_is_stopped(tmp_path):
    path = write(tmp_path, "import time\ndef f(completions, **kw):\n    time.sleep(5)\n    return [1.0] * len(completions)\n")
    with pytest.raises(RewardError, match="reward.timeout_s = 0.2 s on a batch of 2 completions"):
        load_reward(f"{path}:f", timeout_s=0.2).score([RewardInput("p", "a", "g"), RewardInput("p", "b", "g")])


def test_weighted_rewards_sum_what_applies_and_keep_each_value(tmp_path):
    trl = write(tmp_path, "def fmt(completions, **kw):\n    return [None if c == 'n/a' else 1.0 for c in completions]\n")
    rewards = load_rewards(["arithmetic", f"{trl}:fmt", "arithmetic"], [2.0, 0.5, 1.0])
    assert rewards.names == ["arithmetic", "fmt", "arithmetic_2"]
    scored = rewards.score([RewardInput("p", "it is 4", "4"), RewardInput("p", "n/a", "4")])
    assert scored.total == [3.5, 0.0]
    assert scored.per_reward == {"arithmetic": [1.0, 0.0], "fmt": [1.0, None], "arithmetic_2": [1.0, 0.0]}


def test_weights_must_match_the_functions():
    from tunecli.config.io import recipe_from_dict

    recipe = recipe_from_dict({}, ["reward.functions=[math, arithmetic]", "reward.weights=[1, 0.5]"])
    assert recipe.reward.function_list() == ["math", "arithmetic"]
    with pytest.raises(TuneError, match="reward.weights has 1 weights for 2 reward function"):
        recipe_from_dict({}, ["reward.functions=[math, arithmetic]", "reward.weights=[1]"])


@pytest.mark.parametrize("completion, truth, expected", [
    (r"so the answer is \boxed{42}.", "42", 1.0),
    (r"\boxed{41} no wait, \boxed{42}", "42", 1.0),  # the last box counts
    (r"\boxed{42} no wait, \boxed{41}", "42", 0.0),
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{1/2}", r"\frac12", 1.0),
    (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}", 1.0),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1.0),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
    ("the answer is 42", "42", 0.0),  # no box, no answer
    (r"\boxed{42", "42", 0.0),  # never closed
])
def test_math_reward_compares_the_last_boxed_answer(completion, truth, expected):
    assert math_boxed("p", completion, truth) == expected
    assert load_reward("math")("p", completion, truth) == expected


def test_last_boxed_keeps_nested_braces():
    assert last_boxed(r"a \boxed{\frac{1}{\sqrt{2}}} b") == r"\frac{1}{\sqrt{2}}"


def test_a_missing_tracker_library_is_refused_by_validate_and_by_the_trainer():
    from tunecli.authoring.checks import check_recipe
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.trackers import check_available

    missing = next((n for n in ("trackio", "swanlab") if importlib.util.find_spec(n) is None), None)
    if missing is None:
        pytest.skip("trackio and swanlab are both installed")
    recipe = recipe_from_dict({}, [f"trainer.logger=[console, {missing}]"])
    assert recipe.trainer.logger == ["console", missing]
    errors = [str(e) for e in check_recipe(recipe).errors if e.field == "trainer.logger"]
    assert len(errors) == 1 and f"pip install {missing}" in errors[0]
    with pytest.raises(TuneError, match=f"pip install {missing}"):
        check_available(recipe.trainer.logger)
    assert check_recipe(recipe_from_dict({}, ["trainer.logger=[console, tensorboard, wandb, mlflow]"])).errors == []


def test_from_verl_brings_the_custom_compute_score_and_the_trackers_over(tmp_path):
    from pathlib import Path

    from recipe_testutil import tune

    from tunecli.config.io import load_recipe

    reward = write(tmp_path, MARKER + (
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return {'score': 1.0 if solution_str.strip().endswith(ground_truth) else 0.0}\n"), "my reward.py")
    card = Path(__file__).parent / "data" / "verl" / "qwen2-1.5b_grpo-lora_1_h100_fsdp_vllm.sh"
    text = card.read_text().replace(
        "python3 -m verl.trainer.main_ppo \\\n",
        f"python3 -m verl.trainer.main_ppo \\\n    custom_reward_function.path='{reward}' \\\n"
        "    custom_reward_function.name=compute_score \\\n", 1)
    assert "trainer.logger=['console','wandb']" in text
    script = write(tmp_path, text, "run.sh")
    result = tune("new", "--from-verl", script, "--yes", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert not reward.with_suffix(".imported").exists()  # tune new never runs the reward
    (yaml_file,) = (tmp_path / "out").glob("*.yaml")
    recipe = load_recipe(yaml_file)
    assert recipe.reward.function == f"{reward}:compute_score" and recipe.trainer.logger == ["console", "wandb"]
    loaded = load_rewards(recipe.reward.function_list(), recipe.reward.weights)
    assert loaded.rewards[0].contract == "verl"
    assert loaded.score([RewardInput("p", "so 42", "42"), RewardInput("p", "41", "42")]).total == [1.0, 0.0]
