"""Issue 11, integrity of the whole recipe: the header covers the script body and the YAML; `tune run` runs
nothing it did not check (no edited line, no copied header, no file swapped after the check); overrides go
through every `tune new` check; `--fix-hash` never accepts an edited script; an empty YAML is reported;
checks never import a custom reward."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import pytest

from recipe_testutil import flat, tune

from tunecli.launch import runner, slurm

MARKER_REWARD = """\
from pathlib import Path
Path({marker!r}).write_text("imported")  # a reward file that acts at import
raise SystemExit(9)

def score(prompt, completion, ground_truth, **kwargs):
    return 0.0
"""


def _new(out: Path, *args: str, name: str = "a", preset: str = "quickstart-hf") -> tuple[Path, Path]:
    result = tune("new", "--preset", preset, "--yes", "--out", out, "--name", name, *args)
    assert result.exit_code == 0, result.output
    return out / f"{name}.yaml", out / f"{name}.sh"


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """A rendered quickstart-hf pair in tmp_path/g; the cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    return _new(tmp_path / "g")


@pytest.fixture
def started(monkeypatch):
    """Record what `tune run` would start instead of starting it."""
    commands: list[list[str]] = []

    def record(command, env=None, **_):
        commands.append(list(command))
        return runner.Outcome(0, 0)

    monkeypatch.setattr(runner, "run_child", record)
    return commands


def _marker_reward(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "IMPORTED"
    reward = tmp_path / "evil_reward.py"
    reward.write_text(MARKER_REWARD.format(marker=str(marker)))
    return reward, marker


# ---------------------------------------------------------------------------------------------
# An edited script body is refused, with the line that differs


def _inject(text: str) -> str:  # the issue's sed: a line after `set -euo pipefail`
    return text.replace("set -euo pipefail\n", "set -euo pipefail\ntouch PWNED; exit 0\n")


TAMPERINGS = {
    "injected line": (_inject, "line 7 is extra: 'touch PWNED; exit 0'"),
    "changed line": (lambda t: t.replace('exec tune train --config "$config" "$@"', 'touch PWNED; exec tune train "$@"'),
                     "reads 'touch PWNED; exec tune train \"$@\"' where tunecli writes"),
    "removed line": (lambda t: t.replace("set -euo pipefail\n", ""), "'set -euo pipefail' is missing before line 6"),
    "appended line": (lambda t: t + "touch PWNED\n", "is extra: 'touch PWNED'"),
    "line endings": (lambda t: t.replace("\n", "\r\n"), "where tunecli writes"),
}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_edited_body_is_refused_with_the_changed_line(case, pair, tmp_path, started):
    yaml_path, sh = pair
    tamper, shown = TAMPERINGS[case]
    sh.write_bytes(tamper(sh.read_text()).encode())
    result = tune("run", sh)
    assert result.exit_code == 1 and started == []
    text = flat(result.output)
    assert shown in text and f"tune run --trust {sh}" in text
    assert text.count("error:") == 1  # one paragraph
    assert tune("run", "--dry-run", sh).exit_code == 1
    # Running its YAML is refused too: the script beside it can no longer vouch for it.
    refused = tune("run", "--dry-run", yaml_path)
    assert refused.exit_code == 1 and shown in flat(refused.output)


def test_the_issues_injection_runs_nothing(pair, tmp_path):
    """`sed -i 's|^set -euo pipefail|set -euo pipefail\\ntouch PWNED; exit 0|' a.sh; tune run a.sh`."""
    _, sh = pair
    sh.write_text(_inject(sh.read_text()))
    result = tune("run", sh)
    assert result.exit_code == 1
    assert not (tmp_path / "PWNED").exists()


def test_copied_header_on_another_script_needs_trust(pair, tmp_path, started):
    yaml_path, sh = pair
    header = sh.read_text().splitlines()[1]
    evil = yaml_path.parent / "evil.sh"
    evil.write_text(f"#!/usr/bin/env bash\n{header}\ntouch PWNED\n")
    result = tune("run", evil)
    assert result.exit_code == 1 and started == [] and "--trust" in result.output
    assert "line 3 reads 'touch PWNED'" in flat(result.output)
    # Recomputing the hash for the new body does not help: the body is not what tunecli writes.
    from tunecli.config.header import stamp

    evil.write_text(stamp(evil.read_text(), yaml_path.read_bytes(), yaml_path.name))
    result = tune("run", evil)
    assert result.exit_code == 1 and started == [] and "--trust" in result.output
    # With --trust it runs, as it is (bash), because the user said so.
    assert tune("run", "--trust", evil).exit_code == 0
    assert started == [["bash", str(evil)]]


def test_old_format_header_needs_trust(pair, tmp_path, started):
    yaml_path, sh = pair
    sha = hashlib.sha256(yaml_path.read_bytes()).hexdigest()
    lines = sh.read_text().splitlines(keepends=True)
    lines[1] = f"# tunecli-recipe: version=0.1.0 yaml-sha256={sha} yaml={yaml_path.name}\n"
    sh.write_text("".join(lines))
    result = tune("run", sh)
    assert result.exit_code == 1 and started == []
    text = flat(result.output)
    assert "hashed only the YAML" in text and f"tune run --trust {sh}" in text


# ---------------------------------------------------------------------------------------------
# Nothing swapped between the check and the trainer's start runs


def test_files_swapped_after_the_check_do_not_run(pair, tmp_path, monkeypatch, capfd):
    """The script and the YAML are replaced just before `tune run` starts its child: the script is not
    what runs (the checked trainer command is), and the trainer refuses the new YAML before it imports
    its reward."""
    yaml_path, sh = pair
    reward, marker = _marker_reward(tmp_path)
    swapped_yaml, _ = _new(tmp_path / "other", "--reward", f"{reward}:score")
    started: list[list[str]] = []
    real_run_child = runner.run_child

    def swap_then_start(command, env=None, **kw):
        started.append(list(command))
        sh.write_text("#!/usr/bin/env bash\ntouch PWNED\n")
        yaml_path.write_bytes(swapped_yaml.read_bytes())
        return real_run_child(command, env, **kw)

    monkeypatch.setattr(runner, "run_child", swap_then_start)
    result = tune("run", sh)
    err = flat(capfd.readouterr().err)
    assert result.exit_code == 1, err
    assert str(sh) not in started[0] and started[0][:3] == [sys.executable, "-m", "tunecli.train"]
    assert "Refusing to train" in err and "is not the file `tune run` checked" in err
    assert not marker.exists() and not (tmp_path / "PWNED").exists()


def test_trainer_refuses_a_stale_hash_before_importing_anything(pair, tmp_path):
    yaml_path, _ = pair
    checked = hashlib.sha256(yaml_path.read_bytes()).hexdigest()
    reward, marker = _marker_reward(tmp_path)
    swapped_yaml, _ = _new(tmp_path / "other", "--reward", f"{reward}:score")
    yaml_path.write_bytes(swapped_yaml.read_bytes())
    from tunecli.train import main

    assert main(["--config", str(yaml_path), "--config-sha256", checked]) == 1
    result = tune("train", "--config", yaml_path, "--config-sha256", checked)
    assert result.exit_code == 1 and "Refusing to train" in flat(result.output)
    assert not marker.exists()


def test_sbatch_gets_the_checked_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, sh = _new(tmp_path / "g", "--launcher", "slurm", name="s", preset="qwen2-72b_grpo_32_h800_fsdp_vllm")
    checked = sh.read_bytes()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/usr/bin/env bash\n[[ $1 == --parsable ]] && shift\n'
                                    'cp "$1" "$SUBMITTED"; shift; printf "%s\\n" "$@" > "$ARGS"; echo 42\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SUBMITTED", str(tmp_path / "submitted.sh"))
    monkeypatch.setenv("ARGS", str(tmp_path / "args"))
    real_submit = slurm.submit

    def swap_then_submit(command, env, name):
        sh.write_text("#!/usr/bin/env bash\n#SBATCH --nodes=64\ntouch PWNED\n")
        return real_submit(command, env, name)

    monkeypatch.setattr(slurm, "submit", swap_then_submit)
    result = tune("run", sh)
    assert result.exit_code == 0, result.output
    assert "Submitted SLURM job 42." in flat(result.output)
    assert (tmp_path / "submitted.sh").read_bytes() == checked
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["--config-sha256", hashlib.sha256((tmp_path / "g" / "s.yaml").read_bytes()).hexdigest()]


# ---------------------------------------------------------------------------------------------
# --fix-hash accepts an edited YAML, never an edited script


def test_fix_hash_refuses_an_edited_script(pair):
    yaml_path, sh = pair
    sh.write_text(_inject(sh.read_text()))
    yaml_path.write_text(re.sub(r"\n  lr: \S+", "\n  lr: 0.0003", yaml_path.read_text()))
    before = sh.read_bytes()
    result = tune("validate", "--fix-hash", yaml_path)
    assert result.exit_code == 1
    text = flat(result.output)
    assert "line 7 is extra: 'touch PWNED; exit 0'" in text and "the hash was not updated" in text
    assert sh.read_bytes() == before
    assert tune("validate", sh).exit_code == 1  # without --fix-hash: an error, not a warning


@pytest.mark.parametrize("header", ["none", "old"])
def test_fix_hash_on_a_script_without_a_current_header_is_one_paragraph(header, pair):
    yaml_path, sh = pair
    lines = sh.read_text().splitlines(keepends=True)
    sha = hashlib.sha256(yaml_path.read_bytes()).hexdigest()
    lines[1] = "" if header == "none" else f"# tunecli-recipe: version=0.0.9 yaml-sha256={sha} yaml={yaml_path.name}\n"
    sh.write_text("".join(lines))
    before = sh.read_bytes()
    result = tune("validate", "--fix-hash", yaml_path)  # catch_exceptions=False: a traceback fails here
    assert result.exit_code == 1
    text = flat(result.output)
    assert text.count("error:") == 1 and "Traceback" not in text
    assert ("has no tunecli header" if header == "none" else "hashed only the YAML") in text
    assert sh.read_bytes() == before


def test_fix_hash_accepts_an_edited_yaml_and_run_then_starts(pair, started):
    yaml_path, sh = pair
    yaml_path.write_text(re.sub(r"\n  lr: \S+", "\n  lr: 0.0003", yaml_path.read_text()))
    assert tune("run", "--dry-run", sh).exit_code == 1
    fixed = tune("validate", "--fix-hash", yaml_path)
    assert fixed.exit_code == 0, fixed.output
    assert tune("run", sh).exit_code == 0
    assert started[0][-2:] == ["--config-sha256", hashlib.sha256(yaml_path.read_bytes()).hexdigest()]


# ---------------------------------------------------------------------------------------------
# Overrides go through the checks of `tune new`

OVERRIDES = {
    "mini-batch over the batch": ("actor.ppo_mini_batch_size=8", "actor.ppo_mini_batch_size = 8"),
    "longer than the model": ("data.max_response_length=100000", "Memory: the estimated peak"),
    "missing reward file": ("reward.function=missing.py:f", "the file 'missing.py' does not exist"),
}


@pytest.mark.parametrize("case", list(OVERRIDES))
def test_overrides_are_checked_by_tune_run_and_tune_train(case, pair, started, monkeypatch):
    yaml_path, sh = pair
    override, shown = OVERRIDES[case]
    for target in (sh, yaml_path):
        result = tune("run", "--dry-run", target, "--", override)
        assert result.exit_code == 1 and "Would run" not in result.output
        assert shown in flat(result.output)
        assert tune("run", target, "--", override).exit_code == 1
    assert started == []
    import tunecli.cli.train as train_cli

    trained: list[str] = []
    monkeypatch.setattr(train_cli, "train_recipe", lambda *a, **k: trained.append("started") or 0)
    result = tune("train", "--config", yaml_path, override)
    assert result.exit_code == 1 and shown in flat(result.output) and trained == []


def test_override_checks_keep_good_runs_and_start_flags(pair, started):
    _, sh = pair
    result = tune("run", sh, "--no-resume", "--overwrite", "--break-lock", "--", "rollout.n=4")
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(pair[0].read_bytes()).hexdigest()
    assert started[0][-6:] == ["--config-sha256", sha, "--no-resume", "--overwrite", "--break-lock", "rollout.n=4"]


# ---------------------------------------------------------------------------------------------
# An empty YAML is reported; checks never import a custom reward


@pytest.mark.parametrize("content", ["", "# only a comment\n\n# and another\n"])
def test_empty_yaml_is_reported(content, tmp_path, monkeypatch, started):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "e.yaml"
    empty.write_text(content)
    warning = "e.yaml is empty: every field takes its default"
    result = tune("validate", empty)
    assert result.exit_code == 0 and warning in flat(result.output)
    result = tune("run", "--dry-run", empty)
    assert result.exit_code == 0 and warning in flat(result.output)


def test_checks_never_import_a_custom_reward(tmp_path, monkeypatch, started):
    monkeypatch.chdir(tmp_path)
    reward, marker = _marker_reward(tmp_path)
    yaml_path, sh = _new(tmp_path / "g", "--reward", f"{reward}:score")
    assert not marker.exists()
    for args in (["validate", yaml_path], ["validate", sh], ["run", "--dry-run", sh], ["run", "--dry-run", yaml_path]):
        result = tune(*args)
        assert result.exit_code == 0, result.output
    assert not marker.exists()
