"""End to end through the real code: a tiny random Llama trained with the HF engine, then Ctrl-C,
resume, and the same result as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

# A reward with variance on random-weight text, so the policy really moves: longer completions score more.
REWARD_PY = """
def length_reward(prompt, completion, ground_truth, **kwargs):
    return min(len(completion), 40) / 40.0
"""


def write_recipe(tmp: Path, model_dir: Path, run_dir: Path, **overrides) -> Path:
    (tmp / "reward.py").write_text(REWARD_PY)
    recipe = {
        "name": "tiny",
        "model": {"path": str(model_dir), "lora_rank": 4, "lora_alpha": 8},
        "data": {"dataset": "arithmetic", "difficulty": 2, "train_size": 32, "val_size": 4,
                 "train_batch_size": 2, "max_response_length": 6},
        "reward": {"function": f"{tmp / 'reward.py'}:length_reward"},
        "actor": {"ppo_mini_batch_size": 1, "ppo_micro_batch_size_per_gpu": 2, "lr": 5e-3, "ppo_epochs": 2},
        "rollout": {"n": 4},
        "trainer": {"total_training_steps": 4, "save_freq": 1, "test_freq": 2, "default_local_dir": str(run_dir),
                    "num_threads": 1, "seed": 3},
    }
    for key, value in overrides.items():
        section, field = key.split(".")
        recipe[section][field] = value
    path = tmp / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def train(config: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunecli.train", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env=_env(),
    )


def _env() -> dict[str, str]:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def steps(run_dir: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "reward/mean" in r}


def final_weights(run_dir: Path):
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ckpts = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    out = run_dir / "final.pt"
    dcp_to_torch_save(ckpts[-1] / "model_optim", out)
    return ckpts[-1].name, torch.load(out, weights_only=False)


@pytest.mark.slow
def test_interrupt_and_resume_matches_uninterrupted(tmp_path, tiny_model_dir):
    import torch

    # 1. The uninterrupted reference run.
    ref_dir = tmp_path / "ref"
    ref = train(write_recipe(tmp_path, tiny_model_dir, ref_dir))
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_steps = steps(ref_dir)
    assert sorted(ref_steps) == [1, 2, 3, 4]
    assert any(r["actor/grad_norm"] > 0 for r in ref_steps.values())  # it really trained
    assert (ref_dir / "reward.png").is_file() and "peak memory" in ref.stdout

    # 2. The same recipe, interrupted with Ctrl-C after its first step.
    run_dir = tmp_path / "interrupted"
    config = write_recipe(tmp_path, tiny_model_dir, run_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunecli.train", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").is_file() and steps(run_dir):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    assert "Resume with" in out and "python -m tunecli.train" in out
    interrupted_at = max(steps(run_dir))
    assert interrupted_at < 4
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # nothing half-written

    # 3. Resume: same command, picks up the checkpoint and finishes.
    resumed = train(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout

    got = steps(run_dir)
    assert sorted(got) == [1, 2, 3, 4]
    for step in range(1, 5):
        for key in ("reward/mean", "actor/pg_loss", "actor/kl", "actor/grad_norm", "response/length"):
            assert got[step][key] == pytest.approx(ref_steps[step][key], rel=1e-5, abs=1e-7), (step, key)
    name_a, weights_a = final_weights(ref_dir)
    name_b, weights_b = final_weights(run_dir)
    assert name_a == name_b == "step_4"
    lora = {k: v for k, v in weights_a["model"].items() if "lora" in k}
    assert lora, "a LoRA checkpoint holds the adapter"
    for key, value in lora.items():
        assert torch.allclose(value, weights_b["model"][key], atol=1e-6), key


@pytest.mark.slow
def test_resume_refuses_changed_math_and_no_resume_starts_over(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    config = write_recipe(tmp_path, tiny_model_dir, run_dir, **{"trainer.total_training_steps": 1, "trainer.test_freq": -1})
    first = train(config, "trainer.val_before_train=false")
    assert first.returncode == 0, first.stderr[-3000:]
    refused = train(config, "actor.lr=1e-2", "trainer.total_training_steps=2")
    assert refused.returncode == 1
    assert "actor.lr" in refused.stderr and "--no-resume" in refused.stderr and "Traceback" not in refused.stderr
    # Longer run, same math: resumes.
    longer = train(config, "trainer.total_training_steps=2", "trainer.val_before_train=false")
    assert longer.returncode == 0 and "Resumed from" in longer.stdout, longer.stderr[-2000:]
    fresh = train(config, "--no-resume", "actor.lr=1e-2", "trainer.total_training_steps=1", "trainer.val_before_train=false")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    # The old run is moved aside whole, not deleted: its checkpoints and its metrics.
    aside = tmp_path / "run.1"
    assert f"the old run was moved to {aside}" in " ".join(fresh.stdout.split())
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["step_1", "step_2"]
    assert sorted(steps(aside)) == [1, 2] and sorted(steps(run_dir)) == [1]
    assert (run_dir / "checkpoints" / "step_1").is_dir() and not (run_dir / "checkpoints" / "step_2").exists()


@pytest.mark.parametrize("pass_cost,attention", [(0, "eager"), (1000, "eager"), (32, "sdpa")])
def test_shared_prompt_passes_equal_full_pass(tmp_path, tiny_model_dir, monkeypatch, pass_cost, attention):
    """Two ways to run each group's prompt once: one row per group with a 4D mask (the default), and
    the prompt pass + the responses on its KV cache in length buckets (pass_cost 0: one bucket per
    length; 1000: one bucket). Both give the log-probs, entropies and gradients of one plain pass per
    sample, for whole groups and for a micro-batch holding part of a group."""
    import torch

    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer import batching, passes
    from tunecli.trainer.loop import Trainer
    from tunecli.trainer.rollout import Rollout

    monkeypatch.setattr(batching, "PASS_COST_TOKENS", pass_cost)
    recipe = recipe_from_dict({"model": {"path": str(tiny_model_dir), "lora_rank": 4, "attn_implementation": attention},
                               "rollout": {"n": 3, "temperature": 0.7}, "actor": {"compute_dtype": "float32"},
                               "trainer": {"default_local_dir": str(tmp_path / "run")}})
    trainer = Trainer(recipe, resume=False)
    trainer.setup()
    try:
        model = trainer.policy.model
        assert model.config._attn_implementation == attention
        torch.manual_seed(0)
        for p in trainer.policy.trainable_parameters():
            torch.nn.init.normal_(p, std=0.05)  # LoRA B starts at zero: give the adapter a real effect
        prompts = [[1, 5, 6, 7], [1, 9, 10, 11, 12, 13]]
        rollout = Rollout(prompt_ids=[p for p in prompts for _ in range(3)],
                          response_ids=[[4], [4, 5, 6], [7, 8], [9, 9, 9, 2], [3], [5, 6]], finished=[True] * 6, group_size=3)
        params = trainer.policy.trainable_parameters()
        settings = trainer.forward_pass.settings
        full, shared = passes.FullSequencePass(settings), passes.SharedPromptPass(settings)
        group_rows = passes.GroupRowsPass(settings, max_row_tokens=None, long_rows=shared)
        for indices in ([5, 0, 3, 1, 4, 2], [4, 0, 3]):  # any order: the results follow it
            width = max(len(rollout.response_ids[i]) for i in indices)
            expected_mask = torch.tensor([[len(rollout.response_ids[i]) > t for t in range(width)] for i in indices]).float()
            results = []
            for forward in (full, shared, group_rows):
                if forward is not group_rows and len(indices) == 6:
                    chunks = forward.logit_chunks(model, rollout, indices)
                    # One bucket per distinct length with pass_cost 0: responses 2, 1, 4, 3, 1, 2; with prompts 8, 5, 10, 7, 7, 6.
                    assert len(chunks) == (1 if pass_cost == 1000 else (4 if forward is shared else 5) if pass_cost == 0 else len(chunks))
                scores = forward(model, rollout, indices, entropy=True, entropy_grad=True)
                assert torch.equal(scores.mask, expected_mask)
                logp, ent = scores.logp * scores.mask, scores.entropy * scores.mask
                results.append((logp, ent, torch.autograd.grad(logp.sum() + ent.sum(), params)))
            (logp_full, ent_full, g_full), *others = results
            for logp_other, ent_other, g_other in others:
                assert torch.allclose(logp_full, logp_other, atol=1e-5) and torch.allclose(ent_full, ent_other, atol=1e-5)
                for a, b in zip(g_full, g_other):
                    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    finally:
        trainer.cleanup()


def test_long_group_rows_take_the_kv_path_under_eager_attention(tmp_path, tiny_model_dir, monkeypatch):
    """Eager attention keeps a [heads, L, L] score matrix per layer: a group row longer than
    EAGER_MAX_TOKENS goes through the prompt-KV-cache path instead, with the same values."""
    import torch

    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer import passes
    from tunecli.trainer.loop import Trainer
    from tunecli.trainer.policy import EAGER_MAX_TOKENS
    from tunecli.trainer.rollout import Rollout

    recipe = recipe_from_dict({"model": {"path": str(tiny_model_dir), "lora_rank": 4, "attn_implementation": "eager"},
                               "rollout": {"n": 2}, "trainer": {"default_local_dir": str(tmp_path / "run")}})
    trainer = Trainer(recipe, resume=False)
    trainer.setup()
    try:
        chosen = trainer.forward_pass
        assert isinstance(chosen, passes.GroupRowsPass) and chosen.max_row_tokens == EAGER_MAX_TOKENS
        rollout = Rollout(prompt_ids=[[1, 5, 6, 7]] * 2, response_ids=[[4, 5, 6], [7, 8]], finished=[True, True], group_size=2)
        used = []
        monkeypatch.setattr(chosen, "long_rows", lambda *a, f=chosen.long_rows, **k: used.append("kv") or f(*a, **k))
        with torch.no_grad():
            rows = chosen(trainer.policy.model, rollout, [0, 1], entropy=False)
            assert used == []  # row of 4 + 2 + 1 tokens: one group row
            monkeypatch.setattr(chosen, "max_row_tokens", 6)
            kv = chosen(trainer.policy.model, rollout, [0, 1], entropy=False)
            assert used == ["kv"]
        assert torch.allclose(rows.logp * rows.mask, kv.logp * kv.mask, atol=1e-5)
    finally:
        trainer.cleanup()


def test_choose_pass_by_attention_and_checkpointing():
    """The pass for a model: group rows where a 4D mask is all its attention needs (eager rows capped
    at EAGER_MAX_TOKENS), the prompt-KV pass otherwise, the plain pass under gradient checkpointing;
    each with the micro-batch order it runs fastest."""
    from types import SimpleNamespace

    import torch

    from tunecli.trainer.passes import FullSequencePass, GroupRowsPass, PassSettings, SharedPromptPass, choose_pass
    from tunecli.trainer.policy import EAGER_MAX_TOKENS
    from tunecli.trainer.rollout import Rollout

    settings = PassSettings(torch.device("cpu"), pad_id=0, temperature=1.0, bf16=False)

    def choose(attention: str, checkpointing: bool = False, **config):
        model = SimpleNamespace(config=SimpleNamespace(_attn_implementation=attention, **config))
        return choose_pass(model, settings, gradient_checkpointing=checkpointing)

    assert isinstance(choose("eager", checkpointing=True), FullSequencePass)
    assert isinstance(choose("sdpa", checkpointing=True), FullSequencePass)
    eager, sdpa = choose("eager"), choose("sdpa", layer_types=["full_attention"] * 2)
    assert isinstance(eager, GroupRowsPass) and eager.max_row_tokens == EAGER_MAX_TOKENS
    assert isinstance(eager.long_rows, SharedPromptPass)
    assert isinstance(sdpa, GroupRowsPass) and sdpa.max_row_tokens is None
    assert isinstance(choose("flash_attention_2"), SharedPromptPass)
    assert isinstance(choose("sdpa", sliding_window=4096), SharedPromptPass)
    assert isinstance(choose("eager", layer_types=["full_attention", "sliding_attention"]), SharedPromptPass)

    # Totals (prompt + response) 5, 3, 3, 2; groups [0, 1] and [2, 3].
    rollout = Rollout(prompt_ids=[[1, 2]] * 2 + [[3]] * 2, response_ids=[[5, 5, 5], [5], [6, 6], [6]],
                      finished=[True] * 4, group_size=2)
    assert choose("eager", checkpointing=True).micro_batch_order(rollout, [0, 1, 2, 3]) == [3, 1, 2, 0]
    assert eager.micro_batch_order(rollout, [3, 2, 1, 0]) == [1, 0, 3, 2]
    assert choose("flash_attention_2").micro_batch_order(rollout, [3, 2, 1, 0]) == [1, 0, 3, 2]


def test_update_averages_per_update_and_per_micro_batch():
    """Loss shares add up within an optimizer step and average over steps; token fractions average
    over micro-batches, however many each step had."""
    from tunecli.trainer.metrics import UpdateAverages

    averages = UpdateAverages()
    assert averages.means() == {}
    for shares, fractions, grad_norm in (([0.25, 0.5], [0.5, 0.0], 2.0), ([1.5], [0.25], 4.0)):
        for share, fraction in zip(shares, fractions):
            averages.add_per_update({"loss": share})
            averages.add_per_micro_batch({"clip": fraction})
        averages.add_per_update({"grad_norm": grad_norm})
        averages.end_update()
    assert (averages.updates, averages.micro_batches) == (2, 3)
    assert averages.means() == {"loss": (0.75 + 1.5) / 2, "grad_norm": 3.0, "clip": 0.25}


def test_rollout_knows_its_groups():
    from tunecli.trainer.rollout import Rollout

    rollout = Rollout(prompt_ids=[[1]] * 6, response_ids=[[2]] * 6, finished=[True] * 6, group_size=3)
    assert [rollout.group_of(k) for k in range(6)] == [0, 0, 0, 1, 1, 1] and rollout.num_groups == 2
    with pytest.raises(ValueError, match="whole groups of 4"):
        Rollout(prompt_ids=[[1]] * 6, response_ids=[[2]] * 6, finished=[True] * 6, group_size=4)


def test_weight_stream_formats(tiny_model_dir):
    """What each engine asks for: every base weight (LoRA merged), only what training changes, or the
    adapter itself; full fine-tuning streams every weight whatever the format."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunecli.trainer.weights import weight_stream

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert base.config.tie_word_embeddings  # a tied head is streamed too: vLLM's Llama keeps its own copy
    names = set(base.state_dict())
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    full, changed, adapter = (weight_stream(policy, f) for f in ("full", "changed", "adapter"))
    assert {n for n, _ in full} == names and not full.partial
    assert {n for n, _ in changed} == {n for n in names if n.endswith(("q_proj.weight", "v_proj.weight"))} and changed.partial
    adapter_names = {n for n, _ in adapter}
    assert len(adapter_names) == 2 * 2 * 2 and all(".lora_A." in n or ".lora_B." in n for n in adapter_names)  # layers x modules x A, B
    assert adapter.adapter_config["r"] == 4 and adapter.adapter_config["target_modules"] == ["q_proj", "v_proj"]
    for weight_format in ("full", "changed"):
        stream = weight_stream(base, weight_format)
        assert {n for n, _ in stream} == names and not stream.partial
    with pytest.raises(ValueError, match="LoRA"):
        weight_stream(base, "adapter")


def _engine_settings(model_dir, **rollout):
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.rollout import EngineSettings

    return EngineSettings.from_recipe(recipe_from_dict({"rollout": rollout}), str(model_dir))


def test_hf_engine_shared_prefill_matches_plain_generation(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunecli.trainer.rollout import SamplingSettings
    from tunecli.trainer.rollout.hf import HFEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = HFEngine(_engine_settings(tiny_model_dir, dtype="auto"), AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    assert engine.weight_format is None  # it generates on the model it was given: nothing to sync
    prompts = [[1, 5, 6, 7, 8], [9, 10], [11, 12, 13]]  # different lengths: left padding
    greedy = dict(temperature=0.0, max_new_tokens=5)
    shared = engine.generate(prompts, SamplingSettings(n=2, **greedy))
    plain = engine.generate([p for p in prompts for _ in range(2)], SamplingSettings(n=1, **greedy))
    assert shared.response_ids == plain.response_ids and shared.prompt_ids == plain.prompt_ids
    assert (shared.group_size, plain.group_size) == (2, 1)
    assert all(len(r) <= 5 for r in shared.response_ids)
    sampled = [engine.generate(prompts, SamplingSettings(n=2, temperature=1.0, max_new_tokens=5, seed=3)) for _ in range(2)]
    assert sampled[0].response_ids == sampled[1].response_ids  # the seed pins the draw


def test_hf_engine_in_bf16_samples_from_a_synced_copy(tiny_model_dir):
    """rollout.dtype bf16 under an fp32 policy: the engine generates on its own bf16 copy, which holds
    W + scale * B @ A after each sync and never touches the policy."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunecli.trainer.rollout import SamplingSettings, make_engine
    from tunecli.trainer.weights import weight_stream

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    engine = make_engine(_engine_settings(tiny_model_dir, dtype="bfloat16"), policy, tokenizer)
    assert engine.model is not policy and next(engine.model.parameters()).dtype == torch.bfloat16
    assert engine.weight_format == "full"
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=6)
    before = engine.generate([[1, 5, 6, 7]], greedy).response_ids

    torch.manual_seed(0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    q = policy.base_model.model.model.layers[0].self_attn.q_proj
    merged = q.base_layer.weight + q.scaling["default"] * q.lora_B["default"].weight @ q.lora_A["default"].weight
    copy_q = engine.model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(copy_q, merged.bfloat16())  # not synced yet
    engine.update_weights(weight_stream(policy, engine.weight_format))
    assert torch.equal(copy_q, merged.detach().bfloat16())
    assert engine.generate([[1, 5, 6, 7]], greedy).response_ids != before  # it samples from the new weights
    assert next(policy.parameters()).dtype == torch.float32


def test_tune_train_user_errors_are_one_paragraph(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunecli.cli import app

    config = write_recipe(tmp_path, tiny_model_dir, tmp_path / "run")
    result = CliRunner().invoke(app, ["train", "--config", str(config), "actor.lrr=1e-5"])
    text = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 1 and "did you mean 'lr'" in text and "Traceback" not in text
    result = CliRunner().invoke(app, ["train", "--config", str(config), "actor.ppo_mini_batch_size=3"])
    assert result.exit_code == 1 and "actor.ppo_mini_batch_size = 3: larger than data.train_batch_size" in " ".join(result.output.split())


def test_which_config_changes_block_a_resume():
    from tunecli.config.io import dump_recipe, recipe_from_dict
    from tunecli.trainer.checkpoint import math_differences

    saved = dump_recipe(recipe_from_dict({}))

    def diff(*overrides):
        return [d.split(":")[0] for d in math_differences(saved, dump_recipe(recipe_from_dict({}, list(overrides))))]

    # Length of the run, logging, memory knobs and the micro-batch split do not change the math.
    assert diff("trainer.total_training_steps=99", "trainer.test_freq=3", "actor.ppo_micro_batch_size_per_gpu=2",
                "rollout.gpu_memory_utilization=0.5", "launch.n_gpus_per_node=2", "trainer.max_minutes=5") == []
    assert diff("actor.lr=1e-3", "trainer.seed=1", "rollout.n=8", "reward.kwargs={a: 1}") == [
        "actor.lr", "reward.kwargs", "rollout.n", "trainer.seed"]


def test_truncated_responses_get_truncated_score(embedded_dir):
    from transformers import AutoTokenizer

    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.data import Example, PromptSample
    from tunecli.trainer.loop import Trainer
    from tunecli.rewards import load_rewards
    from tunecli.trainer.rollout import Rollout

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    prompts = [PromptSample(Example("What is 2 + 2?", "4"), "p", [1])]
    four = tokenizer("4", add_special_tokens=False)["input_ids"]
    rollout = Rollout(prompt_ids=[[1], [1]], response_ids=[four + [tokenizer.eos_token_id], four], finished=[True, False], group_size=2)
    for truncated_score, expected in ((None, [1.0, 1.0]), (0.0, [1.0, 0.0]), (-0.5, [1.0, -0.5])):
        trainer = Trainer(recipe_from_dict({}, [f"reward.truncated_score={'null' if truncated_score is None else truncated_score}"]))
        trainer.tokenizer, trainer.rewards = tokenizer, load_rewards(["arithmetic"], None)
        scores = trainer._score(prompts, rollout)
        assert scores.total.tolist() == expected
        assert scores.per_reward["arithmetic"] == [1.0, 1.0 if truncated_score is None else None]  # cut: not scored


def test_bf16_compute_dtype_runs_matmuls_in_bf16_and_stays_close(tmp_path, tiny_model_dir):
    """actor.compute_dtype=bfloat16 autocasts the training passes: log-probs come back fp32, differ
    from the fp32 pass (so autocast really ran) but only by bf16 rounding."""
    import torch

    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.loop import Trainer
    from tunecli.trainer.rollout import Rollout

    rollout = Rollout(prompt_ids=[[1, 5, 6, 7]] * 2, response_ids=[[4, 5], [7, 8, 9]], finished=[True, True], group_size=2)
    out = {}
    for dtype in ("float32", "bfloat16"):
        recipe = recipe_from_dict({"model": {"path": str(tiny_model_dir), "lora_rank": 4},
                                   "rollout": {"n": 2}, "actor": {"compute_dtype": dtype},
                                   "trainer": {"default_local_dir": str(tmp_path / dtype)}})
        trainer = Trainer(recipe, resume=False)
        trainer.setup()
        try:
            with torch.no_grad():
                scores = trainer.forward_pass(trainer.policy.model, rollout, [0, 1], entropy=False)
                logp, mask = scores.logp, scores.mask
                # The frozen weights cast once per step (instead of by autocast at each use): same values.
                inner = trainer.policy.model.base_model.model
                base = inner.model.layers[0].mlp.up_proj.base_layer.weight
                with trainer.policy.cast_for_compute(dtype):
                    cast = torch.bfloat16 if dtype == "bfloat16" else torch.float32
                    assert base.dtype == cast
                    # The LM head tied to the input embeddings gets its own cast copy; the lookup stays fp32.
                    assert inner.lm_head.weight.dtype == cast and inner.model.embed_tokens.weight.dtype == torch.float32
                    again = trainer.forward_pass(trainer.policy.model, rollout, [0, 1], entropy=False).logp
                assert base.dtype == torch.float32
                assert inner.lm_head.weight is inner.model.embed_tokens.weight  # tied again
                assert torch.equal(again * mask, logp * mask)
            out[dtype] = (logp * mask, logp.dtype)
        finally:
            trainer.cleanup()
    (fp32, fp32_dtype), (bf16, bf16_dtype) = out["float32"], out["bfloat16"]
    assert fp32_dtype == bf16_dtype == torch.float32
    assert not torch.equal(fp32, bf16)
    assert torch.allclose(fp32, bf16, atol=0.1)


def test_frozen_weights_cast_once_and_again_after_an_in_place_write():
    """The bf16 copies of frozen weights are kept from one block of passes to the next (the same
    storage), and a weight written in place since (a resumed run's load) is cast again."""
    import torch

    from tunecli.trainer.policy import frozen_linear_weights_as

    torch.manual_seed(0)
    embed, hidden, head = torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10, bias=False)
    head.weight = embed.weight  # tied: the head gets a copy, the lookup keeps fp32
    model = torch.nn.Sequential(embed, hidden, head).requires_grad_(False)
    cache: dict = {}

    def cast_storages():
        with frozen_linear_weights_as(torch.bfloat16, model, cache=cache):
            assert hidden.weight.dtype == head.weight.dtype == torch.bfloat16 and embed.weight.dtype == torch.float32
            assert torch.equal(hidden.weight, before.to(torch.bfloat16))
            return hidden.weight.detach(), head.weight.detach()  # held: a fresh cast cannot reuse their memory

    before = hidden.weight.detach().clone()
    first = cast_storages()
    assert hidden.weight.dtype == torch.float32 and head.weight is embed.weight  # restored after the block
    second = cast_storages()
    assert [t.data_ptr() for t in second] == [t.data_ptr() for t in first]  # reused, not cast again
    with torch.no_grad():
        hidden.weight.add_(1.0)
    before = hidden.weight.detach().clone()
    assert cast_storages()[0].data_ptr() != first[0].data_ptr()  # the in-place write is seen


def test_inverse_cdf_sampler_draws_from_the_processed_distribution():
    """The hf engine's sampler: frequencies follow softmax(scores), masked tokens never come up,
    and exactly one token per row stays finite (what greedy decoding then picks)."""
    import torch

    from tunecli.trainer.rollout import SamplingSettings
    from tunecli.trainer.rollout.hf import InverseCdfSampler, sampling_processors

    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05])
    scores = probs.log().expand(20000, 5).clone()  # [N, V]; token 1 has probability 0 (-inf)
    out = InverseCdfSampler()(None, scores)
    assert torch.equal(torch.isfinite(out).sum(-1), torch.ones(20000, dtype=torch.long))
    freq = torch.bincount(out.argmax(-1), minlength=5).float() / 20000
    assert freq[1] == 0 and torch.allclose(freq, probs, atol=0.015)

    # temperature 0.5 then top-k 2: p ~ [0.5^2, 0.3^2] renormalised; tokens 3 and 4 never.
    processors = sampling_processors(SamplingSettings(n=1, temperature=0.5, top_k=2, max_new_tokens=1))
    picked = processors(torch.zeros(20000, 1, dtype=torch.long), scores.clone()).argmax(-1)
    freq = torch.bincount(picked, minlength=5).float() / 20000
    assert freq[3] == freq[4] == 0 and abs(freq[0] - 0.25 / 0.34) < 0.015
