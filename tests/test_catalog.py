"""The catalogue data: every menu loads, shapes match published sizes, presets obey the naming rule."""

from __future__ import annotations

import pytest

from tunecli.catalog import load_catalog, model_shape
from tunecli.errors import TuneError
from tunecli.authoring.checks import check_recipe
from tunecli.authoring.defaults import Choices, build_recipe

CAT = load_catalog()


def test_every_menu_has_unique_names():
    for menu in CAT.MENUS:
        names = CAT.names(menu)
        assert names, menu
        assert len(names) == len(set(names)), menu


def test_menus_hold_what_the_issue_lists():
    assert set(CAT.names("algorithms")) == {
        "grpo", "dr_grpo", "dapo", "rloo", "gspo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "gpg", "grpo_passk"}
    assert set(CAT.names("methods")) == {"lora", "full"}
    assert set(CAT.names("engines")) == {"vllm", "hf"}
    assert set(CAT.names("strategies")) == {"fsdp2", "none"}
    assert set(CAT.names("hardware")) == {"cpu", "h100", "h800", "h200", "h20", "a100-40g", "a100-80g", "l40s", "rtx4090"}
    assert {"arithmetic", "countdown", "gsm8k", "custom"} <= set(CAT.names("datasets"))
    assert {"arithmetic", "gsm8k", "gsm8k_flexible", "countdown", "format", "custom"} <= set(CAT.names("rewards"))
    assert len([p for p in CAT.presets if p.verl_script]) == 12
    assert {"quickstart", "quickstart-hf"} <= set(CAT.names("presets"))


@pytest.mark.parametrize("model", CAT.models, ids=lambda m: m.name)
def test_model_shape_matches_published_parameter_count(model):
    # The layer shapes (used by the memory estimate) must add up to the published size.
    assert model.param_count_from_shape() == pytest.approx(model.params, rel=0.015)


def test_hardware_memory_and_cpu_ram():
    h100 = CAT.get("hardware", "h100", field="x")
    assert h100.memory_bytes() == 80 * 2**30 and h100.bf16
    cpu = CAT.get("hardware", "cpu", field="x")
    assert cpu.memory_gib is None and cpu.memory_bytes() > 2**30


def test_custom_model_shape_is_read_from_config_json(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    }))
    shape = model_shape(str(tmp_path))
    assert (shape.layers, shape.hidden, shape.kv_heads, shape.max_position) == (2, 64, 2, 512)
    assert shape.params == 1000 * 64 + 2 * (64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 128 + 128) + 64


def test_unknown_model_is_a_clear_error():
    with pytest.raises(TuneError, match=r"model.path 'qwen2.5-7bb'.*did you mean 'qwen2.5-7b'"):
        model_shape("qwen2.5-7bb")


@pytest.mark.parametrize("preset", CAT.presets, ids=lambda p: p.name)
def test_preset_builds_passes_checks_and_follows_naming_rule(preset):
    recipe, used = build_recipe(Choices(preset=preset.name))
    assert used is preset
    if preset.verl_script:
        assert recipe.name == preset.name  # names are the naming rule applied strictly
    report = check_recipe(recipe)
    assert report.ok, [str(e) for e in report.errors]
    assert report.memory is not None and report.memory.fits


def test_presets_can_be_found_by_verl_file_name():
    assert CAT.preset("qwen2-1.5b_grpo-lora_1_h100_fsdp_vllm.sh").name == "qwen2.5-1.5b_grpo-lora_1_h100_fsdp_vllm"
    assert CAT.preset("qwen2_14b_grpo_4_h800_fsdp_vllm").name == "qwen2.5-coder-14b_grpo_4_h800_fsdp_vllm"
    with pytest.raises(TuneError, match="did you mean 'quickstart'"):
        CAT.preset("quickstat")
