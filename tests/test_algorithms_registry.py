"""The algorithm registry: names, specs, their settings and rules, and how the recipe schema uses them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunecli.algorithms import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    AlgorithmSpec,
    algorithm_names,
    get_algorithm,
    register_advantage,
    register_algorithm,
    register_policy_loss,
)
from tunecli.algorithms.advantages import compute_advantages
from tunecli.algorithms.losses import policy_loss
from tunecli.catalog import load_catalog
from tunecli.config.io import recipe_from_dict
from tunecli.config.keys import put_path
from tunecli.config.rules import batch_problems
from tunecli.config.schema import Recipe
from tunecli.errors import TuneError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["grpo", "dr_grpo", "dapo", "rloo", "gspo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"]


def test_shipped_algorithms_in_menu_order():
    assert algorithm_names()[: len(SHIPPED)] == SHIPPED


def test_unknown_name_says_did_you_mean():
    with pytest.raises(TuneError) as err:
        get_algorithm("grop")
    assert err.value.field == "algorithm.name"
    assert "did you mean 'grpo'" in str(err.value) and "reinforce_plus_plus" in str(err.value)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_spec_names_registered_math(name):
    spec = get_algorithm(name)
    assert spec.advantage in ADVANTAGE_ESTIMATORS
    assert spec.policy_loss in POLICY_LOSSES


@pytest.mark.parametrize("name", SHIPPED)
def test_every_spec_runs_end_to_end(name):
    # Its estimator and loss, called the way the trainer calls them, give a finite loss with gradients.
    spec = get_algorithm(name)
    recipe = recipe_from_dict(_nested(spec.defaults))
    actor = recipe.actor
    adv = compute_advantages(spec.advantage, torch.tensor([1.0, 0.0, 0.5, 0.5]), 2, lengths=torch.tensor([2, 1, 2, 2]),
                             norm_by_std=recipe.algorithm.norm_adv_by_std_in_grpo)  # [N]
    logp = torch.full((4, 2), -1.0, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    loss, metrics = policy_loss(logp, logp.detach() - 0.1, adv, mask, clip_low=actor.clip_ratio_low,
                                clip_high=actor.clip_ratio_high, clip_ratio_c=actor.clip_ratio_c,
                                loss_agg_mode=actor.loss_agg_mode, max_response_length=2, loss_mode=spec.policy_loss)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and "clip_frac" in metrics


def _nested(dotted: dict) -> dict:
    data: dict = {}
    for key, value in dotted.items():
        put_path(data, key, value)
    return data


@pytest.mark.parametrize("name", SHIPPED)
def test_defaults_are_valid_recipe_settings(name):
    # The menu's settings are dotted recipe keys the schema accepts, and they select the algorithm.
    recipe = recipe_from_dict(_nested(get_algorithm(name).defaults))
    assert recipe.algorithm.name == name
    assert recipe.algorithm.filter_groups is get_algorithm(name).filter_groups


def test_existing_settings_are_unchanged():
    # What catalog/data/algorithms.yaml held for dapo, and GSPO's settings from verl's recipe/gspo.
    assert dict(get_algorithm("dapo").defaults) == {
        "algorithm.name": "dapo", "algorithm.filter_groups": True, "algorithm.norm_adv_by_std_in_grpo": True,
        "actor.loss_agg_mode": "token-mean", "actor.clip_ratio_low": 0.2, "actor.clip_ratio_high": 0.28,
        "actor.use_kl_loss": False,
    }
    gspo = get_algorithm("gspo").defaults
    assert (gspo["actor.clip_ratio_low"], gspo["actor.clip_ratio_high"]) == (3e-4, 4e-4)
    assert gspo["actor.loss_agg_mode"] == "seq-mean-token-mean" and gspo["actor.use_kl_loss"] is False
    assert get_algorithm("gspo").policy_loss == "gspo" and get_algorithm("gspo").advantage == "grpo"


def test_catalog_menu_comes_from_the_registry():
    menu = load_catalog()
    assert menu.names("algorithms")[: len(SHIPPED)] == SHIPPED
    assert menu.get("algorithms", "rloo", field="--algorithm").settings == dict(get_algorithm("rloo").defaults)


@pytest.mark.parametrize("name", ["rloo", "reinforce_plus_plus_baseline"])
def test_group_estimators_refuse_one_sample_per_prompt(name):
    recipe = recipe_from_dict({"algorithm": {"name": name}, "rollout": {"n": 1}})
    (problem,) = get_algorithm(name).problems(recipe)
    assert problem.field == "rollout.n" and "at least 2" in str(problem)
    # The shared rules (tune new and the trainer) include it.
    assert any(p.field == "rollout.n" for p in batch_problems(recipe, world=1))


@pytest.mark.parametrize(("name", "warns"), [("grpo", True), ("reinforce_plus_plus", False)])
def test_one_sample_per_prompt_is_fine_without_a_group_baseline(name, warns):
    recipe = recipe_from_dict({"algorithm": {"name": name}, "rollout": {"n": 1}})
    warnings: list[str] = []
    assert get_algorithm(name).problems(recipe) == [] and batch_problems(recipe, 1, warnings) == []
    assert bool(warnings) is warns  # n = 1 has no group to compare with, which only a group estimator minds


def test_names_are_registered_once():
    with pytest.raises(ValueError):
        register_algorithm(AlgorithmSpec(name="grpo", description="another grpo", advantage="rloo"))
    with pytest.raises(ValueError):
        register_advantage("grpo")(lambda *a, **k: None)
    with pytest.raises(ValueError):
        register_policy_loss("vanilla")(lambda *a, **k: None)


def test_spec_defaults_cannot_contradict_its_fields():
    with pytest.raises(ValueError):
        AlgorithmSpec(name="x", description="", advantage="grpo", defaults={"algorithm.filter_groups": True})
    spec = AlgorithmSpec(name="x", description="", advantage="grpo", filter_groups=True)
    assert spec.defaults == {"algorithm.name": "x", "algorithm.filter_groups": True}


# ------------------------------------------------------------------ schema
def test_filter_groups_defaults_to_the_algorithm():
    assert recipe_from_dict({"algorithm": {"name": "dapo"}}).algorithm.filter_groups is True
    assert recipe_from_dict({"algorithm": {"name": "grpo"}}).algorithm.filter_groups is False
    assert Recipe().algorithm.filter_groups is False


def test_explicit_filter_groups_is_obeyed_for_dapo():
    assert recipe_from_dict({"algorithm": {"name": "dapo", "filter_groups": False}}).algorithm.filter_groups is False
    assert recipe_from_dict({"algorithm": {"name": "grpo", "filter_groups": True}}).algorithm.filter_groups is True


def test_schema_refuses_an_unknown_algorithm_naming_the_field():
    with pytest.raises(TuneError) as err:
        recipe_from_dict({"algorithm": {"name": "gpso"}})
    assert err.value.field == "algorithm.name" and "did you mean 'gspo'" in str(err.value)


def test_importing_the_registry_loads_no_torch():
    code = "import sys, tunecli.algorithms, tunecli.config.schema; assert 'torch' not in sys.modules, 'torch loaded'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
