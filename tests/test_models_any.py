"""Any Hugging Face causal LM by hub id or path (issue 12): where the shape comes from, the warning when
nothing answers, model.revision and model.size in the recipe, and the catalogue's new families."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recipe_testutil import flat, tune
from tunecli.authoring.checks import check_recipe
from tunecli.authoring.defaults import Choices, build_recipe
from tunecli.catalog import load_catalog, lookup_shape, model_shape
from tunecli.errors import TuneError

TINY_CONFIG = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
               "max_position_embeddings": 512}


def _fake_cache(root: Path, repo: str, snapshots: dict[str, int], main: str) -> None:
    """An HF hub cache with one config.json per snapshot (num_hidden_layers = the value) and refs/main."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    for commit, layers in snapshots.items():
        snap = repo_dir / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({**TINY_CONFIG, "num_hidden_layers": layers}))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(main)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return root


def test_cache_shape_follows_refs_main_and_model_revision(hub_cache):
    # "aaa..." sorts first, but refs/main names "bbb...": the old walker took the first in sorted order.
    old, new = "a" * 40, "b" * 40
    _fake_cache(hub_cache, "org/cached-model", {old: 3, new: 5}, main=new)
    assert model_shape("org/cached-model").layers == 5
    assert model_shape("org/cached-model", revision=old).layers == 3


def test_offline_unknown_hub_id_writes_recipe_with_a_warning(hub_cache, tmp_path):
    result = tune("new", "--preset", "qwen2.5-1.5b_grpo-lora_1_h100_fsdp_vllm", "--model", "some-org/Brand-New-8B",
                  "--yes", "--out", tmp_path / "out")
    out = flat(result.output)
    assert result.exit_code == 0, out
    assert "memory estimate is unknown" in out and "--model-size 8B" in out and "hf download some-org/Brand-New-8B" in out
    data = yaml.safe_load((tmp_path / "out" / "brand-new-8b_grpo-lora_1_h100_fsdp_vllm.yaml").read_text())
    assert data["model"]["path"] == "some-org/Brand-New-8B"


def test_cluster_path_with_model_size_gets_an_estimate(tmp_path):
    recipe, _ = build_recipe(Choices(preset="qwen2.5-7b_grpo-lora_1_h100_fsdp_vllm", model="/models/Qwen3-8B",
                                     model_size="8B", gpus=8))
    assert recipe.model.size == "8B" and recipe.launch.n_gpus_per_node == 8
    report = check_recipe(recipe)
    assert report.ok, [str(e) for e in report.errors]
    assert report.memory is not None  # from the stand-in shape
    assert any("model.size 8B" in w for w in report.warnings)
    bad = tune("new", "--model", "/models/x", "--model-size", "8 gigs", "--yes", "--dry-run")
    assert bad.exit_code == 1 and "--model-size" in bad.output


def test_typo_near_a_catalogue_name_is_refused_with_did_you_mean():
    with pytest.raises(TuneError, match=r"did you mean 'qwen3-8b'"):
        lookup_shape("qwen3-8bb")
    # A hub id that the catalogue almost knows: a warning with the hint, not a refusal (it may be private).
    shape, reason = lookup_shape("Qwen/Qwen3-8BB")
    assert shape is None and "did you mean 'Qwen/Qwen3-8B'" in reason


def test_directory_without_config_json_is_refused(tmp_path):
    with pytest.raises(TuneError, match="directory without config.json"):
        lookup_shape(str(tmp_path))


def test_hub_fetch_asks_for_config_json_only(hub_cache, monkeypatch, tmp_path):
    import huggingface_hub

    from tunecli.catalog import hub

    calls = []
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_CONFIG))

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("revision")))
        return str(cfg)

    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert model_shape("org/online-only", revision="v2").hidden == 64
    assert calls == [("org/online-only", "config.json", "v2")]


def test_qwen3_and_llama_recipes_render_the_torchrun_line(tmp_path):
    gpus = 8
    for model, name in (("qwen3-8b", "qwen3-8b"), ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b")):
        result = tune("new", "--model", model, "--gpu-type", "h100", "--gpus", gpus, "--dataset", "arithmetic",
                      "--set", "model.revision=main", "--yes", "--out", tmp_path)
        assert result.exit_code == 0, flat(result.output)
        sh = next(tmp_path.glob(f"{name}_*.sh")).read_text()
        assert f"exec torchrun \\\n  --nproc-per-node {gpus} \\\n  --nnodes 1 \\\n  --standalone \\\n  -m tunecli.train" in sh, sh
        data = yaml.safe_load(next(tmp_path.glob(f"{name}_*.yaml")).read_text())
        assert data["model"]["revision"] == "main" and data["launch"]["strategy"] == "fsdp2"


def test_catalogue_has_the_families_people_train_and_the_wizard_groups_them():
    from tunecli.authoring.wizard import model_menu

    cat = load_catalog()
    ids = {m.hf_id for m in cat.models}
    assert {"Qwen/Qwen3-0.6B", "Qwen/Qwen3-32B", "meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
            "meta-llama/Llama-3.1-8B-Instruct", "google/gemma-2-2b-it", "google/gemma-3-1b-it",
            "mistralai/Mistral-7B-Instruct-v0.3", "microsoft/Phi-3.5-mini-instruct", "microsoft/Phi-4-mini-instruct",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"} <= ids
    menu = model_menu(cat.models)
    headings = [title for value, title in menu if value is None]
    assert len(headings) == len({m.family for m in cat.models}) >= 8
    # Every model sits under its own family's heading.
    family = None
    for value, title in menu:
        if value is None:
            family = title.strip("- ")
        else:
            assert cat.find("models", value).family == family


def test_system_prompt_is_merged_for_a_template_without_a_system_role(embedded_dir):
    from transformers import AutoTokenizer

    from tunecli.trainer.data import Example, render_prompts

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    # Gemma 2's template refuses a system message the same way (raise_exception in the template).
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    [sample] = render_prompts([Example(prompt="What is 2 + 2?", ground_truth="4")], tokenizer,
                              system_prompt="Answer with a number.", max_prompt_length=256, filter_overlong=False)
    assert sample.text == "<start_of_turn>user\nAnswer with a number.\n\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n"
