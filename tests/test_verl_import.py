"""`tune new --from-verl`: verl launch scripts (fixtures in the style of verl's examples/tuning cards)
are read as text, mapped onto the recipe, and checked like any `tune new`."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe_testutil import files_in, flat, tune

from tunecli.errors import TuneError
from tunecli.authoring.defaults import build_recipe
from tunecli.config.io import dump_recipe, load_recipe
from tunecli.importers.verl.command import read_overrides
from tunecli.config.verl_keys import Mapped, Unmapped, map_verl_override
from tunecli.importers.verl.script import import_verl_script
from tunecli.importers.verl.expand import Evaluator
from tunecli.importers.verl.shell import parse_statements

CARDS = Path(__file__).parent / "data" / "verl"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _overrides(script: str) -> dict[str, str]:
    overrides, _ = read_overrides(script)
    return {o.key: o.value for o in overrides}


# ---- the shell reader ------------------------------------------------------------------------

def test_variables_arithmetic_defaults_quotes_and_continuations():
    script = (
        "# a comment with $UNDEFINED and 'quotes\n"
        "n=128; nodes=${NODES:-2}\n"
        "export total=$(( n * nodes / 4 + (3 % 2) ))\n"
        ': "${NAME:=run one}"\n'
        "path='/data/my files'\n"
        "python3 -m verl.trainer.main_ppo \\\n"
        "    data.train_batch_size=${total} \\\n"
        '    data.train_files="[\'$path/train.parquet\']" \\\n'
        "    trainer.project_name=\"$NAME\" trainer.nnodes=$nodes \\\n"
        "    +actor_rollout_ref.actor.optim.lr=1e-6 'trainer.logger=[\"console\"]' \\\n"
        '    trainer.total_epochs=1 "$@" 2>&1 | tee "$NAME.log"\n'
    )
    assert _overrides(script) == {
        "data.train_batch_size": "65",  # bash integer arithmetic: 128 * 2 / 4 + 1
        "data.train_files": "['/data/my files/train.parquet']",
        "trainer.project_name": "run one",
        "trainer.nnodes": "2",
        "actor_rollout_ref.actor.optim.lr": "1e-6",
        "trainer.logger": '["console"]',
        "trainer.total_epochs": "1",
    }


def test_line_numbers_follow_continuations():
    overrides, ev = read_overrides("x=1\npython3 -m verl.trainer.main_ppo \\\n  a.b=1 \\\n  \\\n  c.d=$x\n")
    assert [(o.key, o.line) for o in overrides] == [("a.b", 3), ("c.d", 5)]
    assert ev.line(0) == 1


def test_env_default_is_used_and_script_value_wins():
    assert _overrides("A=5\nB=${B:-7}\nC=${A:-9}\npython3 -m verl.trainer.main_ppo x.a=$B x.c=$C\n") == {"x.a": "7", "x.c": "5"}


def test_command_substitution_is_never_run():
    ev = Evaluator("")
    (stmt,) = parse_statements('X="run-$(rm -rf /tmp/nothing)"')
    assert "rm -rf" in ev.word(stmt[0])  # kept as text


def test_unclosed_backquote_inside_double_quotes_is_a_quoting_error(tmp_path):
    script = tmp_path / "train.sh"
    script.write_text('python3 -m verl.trainer.main_ppo \\\n  trainer.project_name="run-`date"\n')
    with pytest.raises(TuneError, match="line 2: .*matching '`'"):
        import_verl_script(script)


def test_script_without_main_ppo_is_refused(tmp_path):
    script = tmp_path / "train.sh"
    script.write_text("torchrun train.py --lr 1e-5\n")
    with pytest.raises(TuneError, match="no `python3 -m verl.trainer.main_ppo"):
        import_verl_script(script)


# ---- one key at a time (shared with `tune train KEY=VALUE`) -----------------------------------

@pytest.mark.parametrize("key, value, sets", [
    ("actor_rollout_ref.actor.optim.lr", "3e-5", {"actor.lr": "3e-5"}),
    ("trainer.nnodes", "4", {"launch.nnodes": "4"}),
    ("algorithm.adv_estimator", "drgrpo", {"algorithm.name": "dr_grpo"}),
    ("actor_rollout_ref.actor.clip_ratio", "0.2", {"actor.clip_ratio_low": "0.2", "actor.clip_ratio_high": "0.2"}),
    ("actor_rollout_ref.model.target_modules", "[q_proj,v_proj]", {"model.target_modules": ["q_proj", "v_proj"]}),
])
def test_mapped_keys(key, value, sets):
    mapped = map_verl_override(key, value)
    assert isinstance(mapped, Mapped) and mapped.sets == sets and mapped.dropped is None


def test_unmapped_keys_say_why():
    assert map_verl_override("critic.optim.lr", "1").reason == "GRPO-family algorithms have no critic"  # prefix
    assert "engine options" in map_verl_override("actor_rollout_ref.rollout.engine_kwargs.vllm.x", "1").reason
    assert map_verl_override("made.up", "1").reason == "no tunecli equivalent"
    strategy = map_verl_override("actor_rollout_ref.actor.strategy", "megatron")
    assert isinstance(strategy, Unmapped) and "FSDP2" in strategy.note
    files = map_verl_override("data.train_files", "['a.parquet', 'b.parquet']")
    assert files.sets == {"data.train_files": "a.parquet"} and "kept a.parquet" in files.dropped
    assert "use_dynamic_bsz" in map_verl_override("actor_rollout_ref.actor.ppo_max_token_len_per_gpu", "8").reason


def test_an_algorithm_with_a_critic_is_refused():
    with pytest.raises(TuneError, match="algorithm.adv_estimator=gae cannot be imported: PPO's GAE needs a critic"):
        map_verl_override("algorithm.adv_estimator", "gae")


def test_global_micro_batch_next_to_per_gpu_is_listed_not_dropped(tmp_path):
    script = tmp_path / "train_h100.sh"
    script.write_text("python3 -m verl.trainer.main_ppo actor_rollout_ref.actor.ppo_micro_batch_size=64 \\\n"
                      "  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 data.train_files=/d/gsm8k/train.parquet\n")
    result = import_verl_script(script)
    assert "actor.ppo_micro_batch_size_per_gpu=4" in result.choices.sets
    (u,) = [u for u in result.unmapped if u.key == "actor_rollout_ref.actor.ppo_micro_batch_size"]
    assert (u.line, u.value) == (1, "64") and "wins" in u.reason


# ---- cards -> recipes --------------------------------------------------------------------------

def test_lora_card_values_and_unmapped_report():
    result = import_verl_script(CARDS / "qwen2-1.5b_grpo-lora_1_h100_fsdp_vllm.sh")
    recipe, _ = build_recipe(result.choices)
    assert recipe.name == "qwen2.5-1.5b_grpo-lora_1_h100_fsdp_vllm"
    assert (recipe.model.method, recipe.model.lora_rank, recipe.model.lora_alpha) == ("lora", 32, 32)
    assert (recipe.data.train_batch_size, recipe.actor.ppo_mini_batch_size) == (128, 128)
    assert recipe.actor.ppo_micro_batch_size_per_gpu == 128  # from the deprecated global ppo_micro_batch_size
    assert recipe.actor.lr == pytest.approx(3e-5) and recipe.rollout.n == 5
    assert recipe.rollout.gpu_memory_utilization == pytest.approx(0.1)
    assert recipe.actor.param_offload and recipe.actor.optimizer_offload and recipe.data.shuffle is False
    unmapped = {u.key: u for u in result.unmapped}
    assert unmapped["data.truncation"].line == 24
    assert "deprecated" in unmapped["actor_rollout_ref.actor.ppo_micro_batch_size"].reason
    assert "KL is applied as a loss term" in unmapped["algorithm.kl_ctrl.kl_coef"].reason
    assert "layer by layer" in unmapped["actor_rollout_ref.rollout.layered_summon"].reason
    assert "never runs it" in unmapped["trainer.experiment_name"].reason  # 1.5b-$(date +%Y%m%d)
    assert "data.train_batch_size" not in unmapped and "actor_rollout_ref.actor.optim.lr" not in unmapped
    # every override of the script is either mapped or listed: nothing dropped silently
    overrides, _ = read_overrides((CARDS / "qwen2-1.5b_grpo-lora_1_h100_fsdp_vllm.sh").read_text())
    mapped = {o.key for o in overrides} - set(unmapped)
    assert len(mapped) + len(unmapped) == len({o.key for o in overrides})
    assert all(u.reason for u in result.unmapped)


def test_two_gpu_card_converts_global_micro_batch_per_gpu():
    result = import_verl_script(CARDS / "qwen2-14b_grpo-lora_2_h100_fsdp_vllm.sh")
    recipe, _ = build_recipe(result.choices)
    assert (recipe.launch.n_gpus_per_node, recipe.actor.ppo_micro_batch_size_per_gpu) == (2, 58)
    sp = next(u for u in result.unmapped if u.key.endswith("ulysses_sequence_parallel_size"))
    assert sp.value == "2" and "no sequence parallelism" in sp.reason


def test_multi_node_card_with_env_defaults_and_token_budget():
    result = import_verl_script(CARDS / "qwen2-70b_grpo_32_h20_fsdp_vllm.sh")
    recipe, _ = build_recipe(result.choices)
    assert (recipe.launch.nnodes, recipe.launch.n_gpus_per_node, recipe.launch.hardware) == (4, 8, "h20")
    assert recipe.actor.ppo_max_token_len_per_gpu == 24000  # $(( (512 + 512) * 23 + 448 ))
    assert recipe.model.path == "Qwen/Qwen2-72B-Instruct" and recipe.model.method == "full"
    assert any("Qwen2-70B" in n and "--set model.path=" in n for n in result.notes)


def test_deprecated_keys_hydra_prefixes_and_unsupported_engines(tmp_path):
    result = import_verl_script(CARDS / "dapo_custom_reward_h200.sh")
    c = result.choices
    assert (c.gpu_type, c.gpus, c.engine, c.method) == ("h200", 8, "vllm", "full")
    assert c.reward == "/work/rewards/math reward.py:compute_score"
    assert c.dataset == "/data/my math/train.parquet"
    sets = dict(s.split("=", 1) for s in c.sets)
    assert sets["actor.clip_ratio_high"] == "0.28" and sets["algorithm.filter_groups"] == "True"
    assert sets["trainer.project_name"] == "my-dapo" and sets["data.prompt_key"] == "problem"
    unmapped = {u.key: u.reason for u in result.unmapped}
    assert any("rollout.name=sglang: SGLang is not bundled; vLLM serves the rollouts" in n for n in result.notes)
    assert "engine options" in unmapped["actor_rollout_ref.rollout.engine_kwargs.sglang.attention_backend"]
    assert "no critic" in unmapped["critic.optim.lr"]
    assert "kept /data/my math/test.parquet" in unmapped["data.val_files"]
    assert any("megatron" in n for n in result.notes)


def test_broken_variables_are_errors_with_line_numbers(tmp_path):
    with pytest.raises(TuneError) as err:
        import_verl_script(CARDS / "broken_vars.sh")
    msg = str(err.value)
    assert "line 6: $nproc_per_gpu is '22nproc_per_gpu=22' (set on line 3)" in msg
    assert "DATA_DIR" not in msg  # an environment variable: kept as ${DATA_DIR} for the job to supply
    assert "line 12: $MODLE_PATH is used but never defined (did you mean 'MODEL_PATH'?)" in msg
    assert "line 11: data.train_batch_size=total_procs uses the shell variable 'total_procs' without its '$'" in msg
    result = tune("new", "--from-verl", CARDS / "broken_vars.sh", "--yes", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "line 12" in flat(result.output)
    assert files_in(tmp_path / "o") == []


@pytest.mark.parametrize("card, preset", [
    ("qwen2-1.5b_grpo-lora_1_h100_fsdp_vllm", "qwen2.5-1.5b_grpo-lora_1_h100_fsdp_vllm"),
    ("qwen2-14b_grpo-lora_2_h100_fsdp_vllm", "qwen2.5-14b_grpo-lora_2_h100_fsdp_vllm"),
    ("qwen2-7b_grpo_2_h800_fsdp_vllm", "qwen2-7b_grpo_2_h800_fsdp_vllm"),
    ("qwen2-70b_grpo_32_h20_fsdp_vllm", "qwen2-72b_grpo_32_h20_fsdp_vllm"),
])
def test_imported_card_equals_preset_of_the_same_name(card, preset, tmp_path):
    result = tune("new", "--from-verl", CARDS / f"{card}.sh", "--yes", "--out", tmp_path / "imported")
    assert result.exit_code == 0, result.output
    assert "Not mapped from" in result.output
    assert tune("new", "--preset", card, "--yes", "--out", tmp_path / "preset").exit_code == 0
    imported = _flat(dump_recipe(load_recipe(tmp_path / "imported" / f"{preset}.yaml")))
    ours = _flat(dump_recipe(load_recipe(tmp_path / "preset" / f"{preset}.yaml")))
    imported.pop("trainer.project_name"), ours.pop("trainer.project_name")  # the card may name its project
    assert set(imported.pop("trainer.logger")) <= {"console", "wandb"}  # verl's trackers are kept
    ours.pop("trainer.logger")
    assert imported == ours


def test_import_runs_the_same_checks_and_dry_run_writes_nothing(tmp_path):
    # the dapo card names a reward file that does not exist here: refused like any tune new
    result = tune("new", "--from-verl", CARDS / "dapo_custom_reward_h200.sh", "--yes", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "reward.function" in flat(result.output)
    assert files_in(tmp_path / "o") == []
    result = tune("new", "--from-verl", CARDS / "qwen2-7b_grpo_2_h800_fsdp_vllm.sh", "--yes", "--dry-run",
                  "--name", "seven", "--out", tmp_path / "d")
    assert result.exit_code == 0 and "name: seven" in result.output
    assert files_in(tmp_path / "d") == []


def test_flags_override_imported_values(tmp_path):
    result = tune("new", "--from-verl", CARDS / "qwen2-1.5b_grpo-lora_1_h100_fsdp_vllm.sh", "--gpu-type", "h200",
                  "--set", "rollout.n=8", "--yes", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    r = load_recipe(tmp_path / "qwen2.5-1.5b_grpo-lora_1_h200_fsdp_vllm.yaml")
    assert (r.launch.hardware, r.rollout.n) == ("h200", 8)
