"""`tune export`: a run's checkpoint becomes a peft adapter and a merged HF model that agree."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from test_train_e2e import train, write_recipe

pytestmark = pytest.mark.slow


def test_export_adapter_and_merged_agree(tmp_path, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunecli.cli import app

    run_dir = tmp_path / "run"
    config = write_recipe(tmp_path, tiny_model_dir, run_dir, **{"trainer.total_training_steps": 1})
    done = train(config, "trainer.val_before_train=false", "actor.ppo_epochs=1")
    assert done.returncode == 0, done.stderr[-2000:]

    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "out" / "merged" / "config.json").is_file()

    ids = torch.tensor([[1, 520, 33, 44, 99, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter")(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")(ids).logits
    assert not torch.allclose(base_logits, adapted, atol=1e-6)  # the adapter learned something
    assert torch.allclose(adapted, merged, atol=1e-4)


def test_export_without_checkpoint_is_a_clear_error(tmp_path):
    from tunecli.cli import app

    result = CliRunner().invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 1
    assert "No checkpoint" in result.output and "Traceback" not in result.output
