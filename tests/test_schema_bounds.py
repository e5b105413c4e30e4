"""Every number of a recipe is finite and bounded, run directories cannot climb out through '..', and the
memory estimate sees what scales with rollout.n and the lengths."""

from __future__ import annotations

import math
import typing

import pytest
import yaml

from recipe_testutil import files_in, flat, tune

from tunecli.authoring.checks import check_recipe
from tunecli.authoring.defaults import Choices, build_recipe
from tunecli.authoring.memory import estimate
from tunecli.catalog import load_catalog, model_shape
from tunecli.config.io import load_recipe, recipe_from_dict
from tunecli.config.keys import section_model
from tunecli.config.schema import Recipe
from tunecli.errors import TuneError

LOWER, UPPER = ("gt", "ge"), ("lt", "le")


def numeric_fields() -> list[tuple[str, type, dict[str, float]]]:
    """(dotted name, int or float, {'ge': 0, 'le': 1, ...}) for every number field of every section."""
    found = []
    for section, info in Recipe.model_fields.items():
        model = section_model(info.annotation)
        for name, field in (model.model_fields if model else {section: info}).items():
            kinds = [t for t in (typing.get_args(field.annotation) or (field.annotation,)) if t in (int, float)]
            if kinds:
                bounds = {k: getattr(m, k) for m in field.metadata for k in (*LOWER, *UPPER) if hasattr(m, k)}
                found.append((f"{section}.{name}" if model else name, kinds[0], bounds))
    return found


NUMERIC = numeric_fields()


def refusal(dotted: str, value) -> str:
    section, name = dotted.split(".")
    with pytest.raises(TuneError) as err:
        recipe_from_dict({section: {name: value}})
    assert err.value.field == dotted
    return str(err.value)


def test_the_walk_finds_the_number_fields():
    names = {name for name, _, _ in NUMERIC}
    assert {"actor.lr", "rollout.n", "rollout.top_k", "reward.truncated_score", "trainer.seed"} <= names
    assert len(NUMERIC) > 35


@pytest.mark.parametrize("dotted,kind,bounds", NUMERIC, ids=[n for n, _, _ in NUMERIC])
def test_every_number_field_has_both_bounds(dotted, kind, bounds):
    assert any(k in bounds for k in LOWER), f"{dotted} has no lower bound"
    assert any(k in bounds for k in UPPER), f"{dotted} has no upper bound"
    assert all(math.isfinite(v) for v in bounds.values())


@pytest.mark.parametrize("dotted,kind,bounds", NUMERIC, ids=[n for n, _, _ in NUMERIC])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(dotted, kind, bounds, value):
    msg = refusal(dotted, value)
    assert f"'{dotted}' = {value!r}" in msg and "\n" not in msg
    assert "use a number" in msg  # the fix: the allowed range


@pytest.mark.parametrize("dotted,kind,bounds", NUMERIC, ids=[n for n, _, _ in NUMERIC])
def test_values_beyond_each_bound_are_refused_and_the_bounds_are_allowed(dotted, kind, bounds):
    section, name = dotted.split(".")
    beyond = {"gt": lambda b: b, "ge": lambda b: b - 1, "lt": lambda b: b, "le": lambda b: b + 1}
    for key, bound in bounds.items():
        value = kind(beyond[key](bound))
        msg = refusal(dotted, value)
        assert f"'{dotted}' = {value!r}" in msg and "use a number" in msg, msg
        if key in ("ge", "le"):  # the bound itself is a legal value
            assert getattr(getattr(recipe_from_dict({section: {name: kind(bound)}}), section), name) == bound


ISSUE_CASES = [
    ("actor.lr", ".inf"),
    ("reward.truncated_score", ".nan"),
    ("rollout.temperature", ".inf"),
    ("actor.clip_ratio_low", ".inf"),
    ("actor.clip_ratio_high", ".inf"),
    ("actor.clip_ratio_c", ".inf"),
    ("actor.entropy_coeff", ".inf"),
    ("actor.kl_loss_coef", ".inf"),
    ("rollout.top_k", "-7"),
    ("rollout.top_k", "0"),
    ("rollout.max_num_batched_tokens", "-1"),
    ("rollout.n", "100000"),
    ("trainer.seed", "-1"),
    ("trainer.experiment_name", "../../x"),
    ("trainer.experiment_name", ".."),
    ("trainer.experiment_name", "a/b"),
    ("trainer.default_local_dir", "runs/../../x"),
    ("trainer.default_local_dir", "/tmp/../etc"),
]


@pytest.mark.parametrize("dotted,raw", ISSUE_CASES)
def test_tune_new_set_refuses_and_writes_nothing(tmp_path, dotted, raw):
    result = tune("new", "--preset", "quickstart-hf", "--set", f"{dotted}={raw}", "--yes", "--out", tmp_path / "o")
    assert result.exit_code == 1, result.output
    assert f"'{dotted}'" in flat(result.output) and "Traceback" not in result.output
    assert files_in(tmp_path / "o") == []


@pytest.mark.parametrize("dotted,raw", ISSUE_CASES)
def test_tune_validate_refuses_an_edited_yaml(tmp_path, dotted, raw):
    assert tune("new", "--preset", "quickstart-hf", "--yes", "--out", tmp_path, "--name", "v").exit_code == 0
    path = tmp_path / "v.yaml"
    data = yaml.safe_load(path.read_text())
    section, name = dotted.split(".")
    data[section][name] = yaml.safe_load(raw)
    path.write_text(yaml.safe_dump(data))
    result = tune("validate", path)
    assert result.exit_code == 1
    assert f"'{dotted}'" in flat(result.output) and "Traceback" not in result.output


def test_run_directory_cannot_climb_out(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("trainer:\n  experiment_name: ../../x\n")
    with pytest.raises(TuneError, match=r"plain name.*no '/'") as err:
        load_recipe(path)
    assert err.value.field == "trainer.experiment_name" and "'../../x'" in str(err.value)
    path.write_text("trainer:\n  experiment_name: ok\n")
    with pytest.raises(TuneError, match="'..'"):
        load_recipe(path, ["trainer.default_local_dir=../x"])
    with pytest.raises(TuneError, match="plain name"):
        load_recipe(path, ["trainer.experiment_name=../../x"])
    for fine in ("runs/x", "/tmp/runs/x", "./runs/x", "x..y"):
        assert load_recipe(path, [f"trainer.default_local_dir={fine}"]).trainer.default_local_dir == fine
    assert load_recipe(path, ["trainer.experiment_name=my-run_1.2"]).trainer.experiment_name == "my-run_1.2"


# -- the memory estimate ----------------------------------------------------------------------------

def _peak(preset: str, *sets: str) -> int:
    recipe, _ = build_recipe(Choices(preset=preset, sets=list(sets)))
    hw = load_catalog().get("hardware", recipe.launch.hardware, field="x")
    return estimate(recipe, model_shape(recipe.model.path), hw).peak


@pytest.mark.parametrize("preset", ["quickstart", "quickstart-hf", "qwen2.5-7b_grpo-lora_1_h100_fsdp_vllm"])
def test_memory_estimate_grows_with_rollout_n_and_lengths(preset):
    by_n = [_peak(preset, f"rollout.n={n}") for n in (2, 16, 128, 1024)]
    assert by_n == sorted(by_n) and len(set(by_n)) == len(by_n), by_n
    by_length = [_peak(preset, f"data.max_response_length={n}") for n in (16, 256, 2048)]
    assert by_length == sorted(by_length) and len(set(by_length)) == len(by_length), by_length


LONG_GROUPS = ["rollout.n=1024", "data.max_response_length=4096", "actor.ppo_micro_batch_size_per_gpu=1"]


@pytest.fixture()
def ram_32g(monkeypatch):
    import tunecli.catalog

    monkeypatch.setattr(tunecli.catalog, "system_ram_bytes", lambda: 32 * 2**30)


def test_largest_group_with_long_responses_is_refused_on_cpu(ram_32g, tmp_path):
    small, _ = build_recipe(Choices(preset="quickstart-hf", sets=LONG_GROUPS[1:]))
    assert check_recipe(small).ok  # the lengths alone fit
    recipe, _ = build_recipe(Choices(preset="quickstart-hf", sets=LONG_GROUPS))
    assert recipe.launch.hardware == "cpu"
    report = check_recipe(recipe)
    assert [e.field for e in report.errors] == ["memory"]
    msg = str(report.errors[0])
    assert "\n" not in msg and "generation" in msg and "a smaller rollout.n (now 1024)" in msg
    result = tune("new", "--preset", "quickstart-hf", *[a for s in LONG_GROUPS for a in ("--set", s)], "--yes",
                  "--out", tmp_path / "o")
    assert result.exit_code == 1 and "a smaller rollout.n" in flat(result.output)
    assert files_in(tmp_path / "o") == []
