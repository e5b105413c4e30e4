"""The one verl key table (``config.verl_keys``): the importer, `tune train/run -- KEY=VALUE` and
`tune new --set` all read verl's keys through it; values tunecli cannot honour are refused by name."""

from __future__ import annotations

import pytest

from recipe_testutil import flat, tune

from tunecli.config.io import apply_overrides, load_recipe
from tunecli.config.verl_keys import Mapped, map_verl_override
from tunecli.errors import TuneError
from tunecli.importers.verl.script import import_verl_script

MAIN = "python3 -m verl.trainer.main_ppo"


@pytest.fixture
def quickstart(tmp_path):
    assert tune("new", "--preset", "quickstart", "--name", "q", "--yes", "--out", tmp_path).exit_code == 0
    return tmp_path / "q.yaml"


def test_verl_keys_are_accepted_on_a_recipe_like_our_own(quickstart):
    r = load_recipe(quickstart, ["actor_rollout_ref.rollout.n=8", "actor_rollout_ref.actor.optim.lr=3e-5",
                                 "trainer.n_gpus_per_node=1", "data.seed=7", "rollout.temperature=0.9"])
    assert (r.rollout.n, r.actor.lr, r.launch.n_gpus_per_node, r.trainer.seed, r.rollout.temperature) == (
        8, 3e-5, 1, 7, 0.9)


def test_a_verl_key_with_no_meaning_is_listed_not_ignored(quickstart):
    with pytest.raises(TuneError) as err:
        load_recipe(quickstart, ["trainer.critic_warmup=0", "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2"])
    msg = str(err.value)
    assert "2 verl override(s) have no meaning" in msg and "trainer.critic_warmup=0 (no critic)" in msg
    assert "tensor_model_parallel_size=2 (no Megatron" in msg
    with pytest.raises(TuneError, match="trainer has no field 'sav_freq'.*did you mean 'save_freq'"):
        load_recipe(quickstart, ["trainer.sav_freq=3"])  # not a verl key either: a typo


def test_tune_new_set_and_tune_run_take_verl_keys(quickstart, tmp_path):
    result = tune("new", "--preset", "quickstart", "--set", "actor_rollout_ref.rollout.n=8", "--yes", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "n=8" in result.output
    result = tune("run", quickstart.with_suffix(".sh"), "--dry-run", "--", "actor_rollout_ref.rollout.n=4")
    assert result.exit_code == 0, result.output
    # verl's trainer.logger is a tunecli key too (issue 13): the trackers it names are kept
    assert load_recipe(quickstart, ["trainer.logger=['console','tensorboard']"]).trainer.logger == ["console", "tensorboard"]


@pytest.mark.parametrize("estimator, algorithm", [
    ("grpo", "grpo"), ("rloo", "rloo"), ("reinforce_plus_plus", "reinforce_plus_plus"),
    ("reinforce_plus_plus_baseline", "reinforce_plus_plus_baseline"), ("drgrpo", "dr_grpo"), ("gpg", "gpg"),
    ("grpo_passk", "grpo_passk"),
])
def test_estimators_tunecli_implements(estimator, algorithm):
    assert map_verl_override("algorithm.adv_estimator", estimator).sets == {"algorithm.name": algorithm}


@pytest.mark.parametrize("estimator, why", [
    ("remax", "ReMax's baseline is a second, greedy rollout"), ("opo", "OPO"),
    ("gae", "needs a critic"),
])
def test_estimators_refused_by_name(estimator, why):
    with pytest.raises(TuneError, match=f"algorithm.adv_estimator={estimator} cannot be imported: .*{why}"):
        map_verl_override("algorithm.adv_estimator", estimator)


def test_loss_mode_gspo_makes_grpo_gspo_in_either_order_and_conflicts_are_refused():
    first = ["algorithm.adv_estimator=grpo", "actor_rollout_ref.actor.policy_loss.loss_mode=gspo"]
    assert apply_overrides({}, first)["algorithm"]["name"] == "gspo"
    assert apply_overrides({}, first[::-1])["algorithm"]["name"] == "gspo"
    assert map_verl_override("actor_rollout_ref.actor.policy_loss.loss_mode", "vanilla").sets == {}
    with pytest.raises(TuneError, match="two algorithms, reinforce_plus_plus and gspo"):
        apply_overrides({}, ["algorithm.adv_estimator=reinforce_plus_plus", first[1]])
    with pytest.raises(TuneError, match="loss_mode=clip_cov cannot be imported: Clip-Cov"):
        map_verl_override("actor_rollout_ref.actor.policy_loss.loss_mode", "clip_cov")


def test_megatron_offloads_are_fsdp2_offloads_and_sglang_is_served_by_vllm():
    param = map_verl_override("actor_rollout_ref.actor.megatron.param_offload", "True")
    assert isinstance(param, Mapped) and param.sets == {"actor.param_offload": "True"} and "FSDP2" in param.note
    assert map_verl_override("actor_rollout_ref.actor.megatron.optimizer_offload", "True").sets == {
        "actor.optimizer_offload": "True"}
    engine = map_verl_override("actor_rollout_ref.rollout.name", "sglang")
    assert engine.sets == {"rollout.name": "vllm"} and "vLLM serves the rollouts" in engine.note


def test_gspo_card_imports_as_gspo(tmp_path):
    card = tmp_path / "gspo_8_h100.sh"
    card.write_text(f"loss_mode=gspo\n{MAIN} actor_rollout_ref.actor.policy_loss.loss_mode=$loss_mode \\\n"
                    "  algorithm.adv_estimator=grpo actor_rollout_ref.model.path=Qwen/Qwen2.5-7B-Instruct \\\n"
                    "  actor_rollout_ref.actor.megatron.param_offload=True trainer.n_gpus_per_node=8\n")
    result = import_verl_script(card)
    assert result.choices.algorithm == "gspo"
    assert "actor.param_offload=True" in result.choices.sets
    assert any("FSDP2" in n for n in result.notes)


@pytest.mark.parametrize("name, line, sentence", [
    ("run_qwen2_5_vl-7b.sh", "actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct",
     "trains the vision-language model Qwen/Qwen2.5-VL-7B-Instruct: tunecli's trainer is text-only"),
    ("run_glm41v_9b.sh", "actor_rollout_ref.model.path=zai-org/GLM-4.1V-9B-Thinking", "vision-language model"),
    ("run_x.sh", "data.image_key=images", r"trains images \(data.image_key\)"),
    ("run_qwen3-8b_npu.sh", "trainer.device=npu", "runs on Ascend NPUs: tunecli has no NPU support"),
])
def test_vision_language_models_and_npus_are_refused_in_one_sentence(tmp_path, name, line, sentence):
    card = tmp_path / name
    card.write_text(f"{MAIN} algorithm.adv_estimator=grpo {line}\n")
    with pytest.raises(TuneError, match=sentence):
        import_verl_script(card)
