"""The shell idioms of verl's launch scripts (read by bashlex, never run): positional defaults, "$@"
pass-through, arrays, `if` blocks that choose a value, variables the environment supplies."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe_testutil import files_in, flat, tune

from tunecli.config.io import load_recipe
from tunecli.errors import TuneError
from tunecli.importers.verl.command import read_overrides
from tunecli.importers.verl.script import import_verl_script, parse_env

IDIOMS = Path(__file__).parent / "data" / "verl_idioms" / "qwen2_7b_grpo_2_h20_fsdp_vllm.sh"
MAIN = "python3 -m verl.trainer.main_ppo"


def _values(script: str, env: dict[str, str] | None = None) -> dict[str, str]:
    overrides, _ = read_overrides(script, env)
    return {o.key: str(o.value) for o in overrides}


def _sets(result) -> dict[str, str]:
    return dict(s.split("=", 1) for s in result.choices.sets)


def test_positional_default_is_used_and_reported_and_env_gives_the_argument():
    script = f"ENGINE=${{1:-vllm}}\nN=${{2:-4}}\n{MAIN} actor_rollout_ref.rollout.name=$ENGINE a.n=$N\n"
    overrides, ev = read_overrides(script)
    assert {o.key: o.value for o in overrides} == {"actor_rollout_ref.rollout.name": "vllm", "a.n": "4"}
    assert any("$1 is not given: its default 'vllm' is used" in n for n in ev.notes)
    assert _values(script, {"1": "hf"})["actor_rollout_ref.rollout.name"] == "hf"


def test_an_argument_without_default_is_an_error_naming_env():
    _, ev = read_overrides(f"{MAIN} a.b=$1\n")
    assert any("$1 is the script's argument 1" in e and "--env 1=VALUE" in e for e in ev.errors)


@pytest.mark.parametrize("tail", ['"$@"', "$@", "${@:2}", '"${@:2}"', "$*"])
def test_callers_arguments_are_passed_through_and_noted(tail):
    overrides, ev = read_overrides(f"{MAIN} a.b=1 {tail}\n")
    assert [(o.key, o.value) for o in overrides] == [("a.b", "1")] and not ev.errors
    assert any("hands its own arguments" in n for n in ev.notes)


def test_arrays_expand_element_by_element():
    script = ("DATA=(\n  data.train_batch_size=64   # a comment with the cluster's quote\n"
              '  "data.train_files=/my data/train.parquet"\n)\n'
              "export MODEL=(actor_rollout_ref.model.path=Qwen/Qwen2-7B)\n"
              f'{MAIN} "${{DATA[@]}}" ${{MODEL[@]}} a.c=1\n')
    assert _values(script) == {"data.train_batch_size": "64", "data.train_files": "/my data/train.parquet",
                               "actor_rollout_ref.model.path": "Qwen/Qwen2-7B", "a.c": "1"}


def test_if_blocks_choose_a_value_and_both_branches_are_reported():
    script = ('MODE=${1:-sync}\nif [ "$MODE" = async ]; then\n  n=4\nelif [ -n "$FAST" ]; then n=2\nelse\n  n=8\nfi\n'
              f"{MAIN} a.n=$n\n")
    overrides, ev = read_overrides(script)
    assert overrides[0].value == "2"  # $FAST is not known: the first branch of the elif is used, and said so
    note = next(n for n in ev.notes if "'4' (then) or '2' (else)" in n)
    assert note.startswith("line 2: an `if` block") and "the condition does not hold" in note
    assert any("needs the script to run" in n for n in ev.notes)
    assert _values(script, {"1": "async"})["a.n"] == "4"
    assert _values(script, {"FAST": ""})["a.n"] == "8"


def test_pwd_set_x_comments_continuations_and_pipes():
    script = (f"set -x\n# $UNDEFINED in a comment\nulimit -n 65536\nexport MASTER_PORT=$((RANDOM % 100))\n"
              f"{MAIN} \\\n  a.dir=$(pwd)/out \\\n  a.here=$PWD/x 2>&1 | tee log.txt\n")
    overrides, ev = read_overrides(script)
    assert {o.key: str(o.value) for o in overrides} == {"a.dir": "${PWD}/out", "a.here": "${PWD}/x"}
    assert ev.errors == []  # $RANDOM is never used by main_ppo: its arithmetic does not matter


def test_env_supplied_paths_stay_references_and_lowercase_undefined_is_an_error():
    overrides, ev = read_overrides(f"{MAIN} a.dir=$CKPT_DIR/run a.x=$data_path\n")
    assert str(overrides[0].value) == "${CKPT_DIR}/run"
    assert any("$data_path is used but never defined" in e for e in ev.errors)
    assert not any("CKPT_DIR" in e for e in ev.errors)


def test_the_idioms_card_imports_with_references_notes_and_gpu_type_from_underscores():
    result = import_verl_script(IDIOMS)
    c, sets = result.choices, _sets(result)
    assert (c.gpu_type, c.gpus, c.engine, c.model) == ("h20", 2, "vllm", "Qwen/Qwen2-7B-Instruct")
    assert sets["data.train_files"] == "${RAY_DATA_HOME}/gsm8k/train.parquet"
    assert sets["trainer.default_local_dir"] == "${PWD}/ckpt/${CKPT_NAME}"
    assert sets["rollout.n"] == "8" and sets["data.train_batch_size"] == "64"
    assert any("keeps $RAY_DATA_HOME as a reference" in n for n in result.notes)
    given = import_verl_script(IDIOMS, parse_env(["1=hf", "FAST=1", "RAY_DATA_HOME=/data"]))
    assert (given.choices.engine, _sets(given)["rollout.n"], _sets(given)["actor.lr"]) == ("hf", "4", "1e-5")
    assert _sets(given)["data.train_files"] == "/data/gsm8k/train.parquet"


def test_an_env_value_a_check_needs_now_must_be_given(tmp_path):
    script = tmp_path / "card.sh"
    script.write_text(f"{MAIN} algorithm.adv_estimator=grpo data.train_batch_size=$BSZ trainer.n_gpus_per_node=1\n")
    with pytest.raises(TuneError, match=r"data.train_batch_size=\$\{BSZ\} needs the value of \$BSZ now.*--env BSZ=VALUE"):
        import_verl_script(script)
    assert _sets(import_verl_script(script, {"BSZ": "32"}))["data.train_batch_size"] == "32"


def test_bad_env_flag_is_refused(tmp_path):
    with pytest.raises(TuneError, match="--env 'oops' is not NAME=VALUE"):
        parse_env(["oops"])
    result = tune("new", "--preset", "quickstart", "--env", "A=1", "--yes", "--out", tmp_path)
    assert result.exit_code == 1 and "no --from-verl script" in flat(result.output)


def test_recipe_references_are_resolved_when_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_DATA_HOME", raising=False)
    monkeypatch.delenv("CKPT_NAME", raising=False)
    result = tune("new", "--from-verl", IDIOMS, "--yes", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    (yaml_path,) = [tmp_path / f for f in files_in(tmp_path) if f.endswith(".yaml")]
    assert "${RAY_DATA_HOME}/gsm8k/train.parquet" in yaml_path.read_text()
    with pytest.raises(TuneError, match="needs the environment variable RAY_DATA_HOME, which is not set"):
        load_recipe(yaml_path)
    monkeypatch.setenv("RAY_DATA_HOME", "/cluster/data")
    monkeypatch.setenv("CKPT_NAME", "run1")
    recipe = load_recipe(yaml_path)
    assert recipe.data.train_files == "/cluster/data/gsm8k/train.parquet"
    assert recipe.trainer.default_local_dir.endswith("/ckpt/run1")


def test_env_flag_on_the_command_line_fills_arguments_and_environment(tmp_path):
    result = tune("new", "--from-verl", IDIOMS, "--env", "1=hf", "--env", "RAY_DATA_HOME=/cluster/data", "--yes",
                  "--dry-run")
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "train_files: /cluster/data/gsm8k/train.parquet" in out and "name: hf" in out
    assert "its default 'vllm' is used" not in out  # the argument was given


def test_functions_are_read_where_called_and_loops_and_case_are_refused_clearly():
    overrides, _ = read_overrides(f"run() {{\n  {MAIN} a.b=$N\n}}\nN=3\nrun\n")
    assert [(o.key, o.value) for o in overrides] == [("a.b", "3")]
    with pytest.raises(TuneError, match="line 1: the main_ppo command is inside a `for` loop"):
        read_overrides(f"for n in 1 2; do\n  {MAIN} a=$n\ndone\n")
    with pytest.raises(TuneError, match="such as a `case` statement. Set the values"):
        read_overrides(f"case $1 in a) X=1;; esac\n{MAIN} a=1\n")
