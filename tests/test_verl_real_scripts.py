"""verl's own launch scripts (tests/data/verl_scripts, see its README): the cards import, the broken
one is refused, and the text-model grpo_trainer scripts import except for named reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunecli.authoring.new import build_checked
from tunecli.errors import TuneError
from tunecli.importers.verl.script import import_verl_script

SCRIPTS = Path(__file__).parent / "data" / "verl_scripts"
# Refused for a reason of their own, and the reason
REFUSED = {
    "run_deepseek7b_llm_megatron.sh": "matching \"'\"",  # trainer.logger=['console','wandb] : bash refuses it too
    "run_qwen3moe-30b_megatron_96gb.sh": "$aime24_test_path is used but never defined",  # a bug in the script
    "run_qwen2-7b_math_megatron_lora.sh": "Memory: the estimated peak per GPU",  # Megatron TP=4, no recompute
    "run_mistral3_1_24b.sh": "tunecli's trainer is text-only",  # a vision-language model
    "qwen2-70b_grpo_32_h20_fsdp_vllm.sh": "$data_path is used but never defined",  # the broken card
}


def _outcome(script: Path) -> str:
    """'imported' or the refusal text."""
    try:
        checked = build_checked(import_verl_script(script).choices)
    except TuneError as e:
        return str(e)
    errors = [str(e) for e in checked.report.errors]
    return " ".join(errors) if errors else "imported"


@pytest.mark.parametrize("script", sorted((SCRIPTS / "tuning").glob("*.sh")), ids=lambda p: p.name)
def test_tuning_cards(script):
    outcome = _outcome(script)
    if script.name in REFUSED:
        assert REFUSED[script.name] in outcome
    else:
        assert outcome == "imported", outcome


def test_the_broken_70b_card_names_both_mistakes():
    with pytest.raises(TuneError) as err:
        import_verl_script(SCRIPTS / "tuning" / "qwen2-70b_grpo_32_h20_fsdp_vllm.sh")
    assert "line 9: $data_path is used but never defined" in str(err.value)
    assert "line 16: actor_rollout_ref.model.path=model_path uses the shell variable 'model_path' without" in str(err.value)


def test_megatron_h20_card_offloads_with_fsdp2_and_is_checked_against_an_h20():
    result = import_verl_script(SCRIPTS / "tuning" / "qwen2_32B_grpo_8_h20_megatron_vllm.sh")
    sets = dict(s.split("=", 1) for s in result.choices.sets)
    assert result.choices.gpu_type == "h20"
    assert (sets["actor.param_offload"], sets["actor.optimizer_offload"]) == ("True", "True")
    assert build_checked(result.choices).report.ok


def test_grpo_trainer_scripts():
    outcomes = {s.name: _outcome(s) for s in sorted((SCRIPTS / "grpo_trainer").glob("*.sh"))}
    for name, reason in REFUSED.items():
        if name in outcomes:
            assert reason in outcomes.pop(name), name
    assert set(outcomes.values()) == {"imported"}, outcomes
    text_models = len(outcomes) + 3  # the three refused text-model scripts above
    assert (len(outcomes), text_models) == (35, 38)  # 92% of the text-model scripts import


def test_megatron_mini_batch_is_raised_to_split_over_every_process():
    result = import_verl_script(SCRIPTS / "grpo_trainer" / "run_qwen3-236b_megatron.sh")
    sets = dict(s.split("=", 1) for s in result.choices.sets)
    assert sets["actor.ppo_mini_batch_size"] == "64"  # 16 prompts x 4 samples cannot split over 256 processes
    assert any("actor.ppo_mini_batch_size 16 -> 64" in note for note in result.notes)
