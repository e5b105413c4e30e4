"""`tune run`: header/hash/trust checks, hardware checks, dry-run command lines, Ctrl-C and resume."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunecli.cli import app
from tunecli.launch import hardware
from tunecli.launch.hardware import Gpu, Machine
from tunecli.config.io import dump_recipe
from tunecli.trainer.manifest import write_manifest

sys.path.insert(0, str(Path(__file__).parent))
from torchrun_helpers import free_port, read_metrics, run, small_recipe, tune_cmd, worker_env, write_recipe  # noqa: E402

runner = CliRunner()


@pytest.fixture
def recipes(tmp_path, monkeypatch, tiny_model_dir):
    """Rendered 1-process, 2-process and 2-node recipes in tmp_path (also the cwd)."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model dir"  # a space: paths must survive quoting
    model.symlink_to(tiny_model_dir, target_is_directory=True)
    out = {}
    for name, launch in {"one": {"n_gpus_per_node": 1, "strategy": "none"}, "two": {}, "nodes": {"nnodes": 2, "n_gpus_per_node": 1}}.items():
        out[name] = write_recipe(small_recipe(model, name, launch=launch), tmp_path / "generated")
    return out


def invoke(*args: str):
    return runner.invoke(app, list(args))


def dry_run_lines(*args: str) -> list[str]:
    result = invoke("run", "--dry-run", *args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("Would run:")
    return [ln for ln in lines[start + 1 :] if ln not in ("which runs:",) and not ln.startswith("(")]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dry_run_prints_the_exact_command_lines(recipes, tmp_path):
    """A checked script's trainer command starts directly, with the checked YAML's sha256."""
    gen = tmp_path / "generated"
    py, two = sys.executable, gen / "two.yaml"
    assert dry_run_lines("generated/two.sh", "--", "actor.lr=1e-5") == [shlex.join([
        py, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1", "--standalone",
        "-m", "tunecli.train", "--config", str(two), "--config-sha256", _sha(two), "actor.lr=1e-5"])]
    one = gen / "one.yaml"
    assert dry_run_lines("generated/one.sh", "--no-resume") == [
        shlex.join([py, "-m", "tunecli.train", "--config", str(one), "--config-sha256", _sha(one), "--no-resume"])]
    assert dry_run_lines("generated/nodes.sh")[0].endswith(
        "--nproc-per-node 1 --nnodes 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:29500 "
        f"-m tunecli.train --config {gen}/nodes.yaml --config-sha256 {_sha(gen / 'nodes.yaml')}"
    )
    # The YAML runs through this interpreter's torchrun, with launch.* overrides honoured.
    lines = dry_run_lines("generated/two.yaml", "--", "launch.n_gpus_per_node=1")
    assert lines == [shlex.join([py, "-m", "tunecli.train", "--config", str(two), "--config-sha256", _sha(two),
                                 "launch.n_gpus_per_node=1"])]
    assert not (tmp_path / "runs").exists()  # a dry run starts nothing


def _as_script_spells_it(cmd: list[str]) -> list[str]:
    """A dry-run command as the script writes it: `tune train` / `torchrun` from the PATH, no hash."""
    head = {"tunecli.train": ["tune", "train"], "torch.distributed.run": ["torchrun"]}[cmd[2]]
    i = cmd.index("--config-sha256")
    return head + cmd[3:i] + cmd[i + 2:]


def test_rendered_script_runs_what_dry_run_prints(recipes, tmp_path):
    """`tune run` starts the command a checked script ends in: run the real scripts with stand-ins for
    `tune` and `torchrun` that print their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("tune", "torchrun"):
        stub = bin_dir / tool
        stub.write_text('#!/usr/bin/env bash\nprintf "%s" "$(basename "$0")"; printf " %q" "$@"; echo\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for name in ("one", "two", "nodes"):
        printed = dry_run_lines(f"generated/{name}.sh", "--", "rollout.n=2")
        ran = subprocess.run(["bash", f"generated/{name}.sh", "rollout.n=2"], env=env, capture_output=True, text=True, check=True)
        assert shlex.split(ran.stdout) == _as_script_spells_it(shlex.split(printed[0])), name


def test_hash_mismatch_is_refused_with_what_changed(recipes, tmp_path):
    yaml_path, script = recipes["two"]
    original = yaml.safe_load(yaml_path.read_text())
    # A checkpoint of an earlier run of this recipe lets tune run name the changed values.
    ckpt = tmp_path / "runs" / "two" / "checkpoints" / "step_1"
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text(yaml.safe_dump(dump_recipe(small_recipe(original["model"]["path"], "two"))))
    write_manifest(ckpt)  # the mark of a finished checkpoint
    yaml_path.write_text(yaml_path.read_text().replace("lr: 0.01", "lr: 0.03"))

    result = invoke("run", str(script))
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "changed after `tune new` wrote" in message
    assert "actor.lr: 0.01 -> 0.03" in message
    assert f"tune validate --fix-hash {yaml_path}" in message
    # Running the YAML itself is refused too while its script says otherwise.
    assert invoke("run", str(yaml_path), "--dry-run").exit_code == 1
    # The way out the message names: re-check and accept the edit.
    fixed = invoke("validate", "--fix-hash", str(yaml_path))
    assert fixed.exit_code == 0, fixed.output
    assert invoke("run", "--dry-run", str(script)).exit_code == 0


def test_hash_mismatch_without_a_previous_run_still_explains(recipes):
    yaml_path, script = recipes["one"]
    yaml_path.write_text(yaml_path.read_text() + "# my note\n")
    result = invoke("run", str(script), "--dry-run")
    assert result.exit_code == 1
    assert "changed after" in result.output and "--fix-hash" in result.output


def test_foreign_script_needs_trust_and_its_exit_code_is_returned(tmp_path):
    script = tmp_path / "mine.sh"
    script.write_text('#!/usr/bin/env bash\necho "args: $*"\nexit 3\n')
    result = invoke("run", str(script))
    assert result.exit_code == 1
    assert "not written by tunecli" in result.output and "--trust" in result.output
    ran = run(tune_cmd("run", "--trust", str(script), "--", "a.b=1"), timeout=60, cwd=tmp_path)
    assert ran.returncode == 3
    assert "args: a.b=1" in ran.stdout


def test_overrides_are_checked_before_launch(recipes):
    result = invoke("run", "generated/two.sh", "--dry-run", "--", "actor.lrr=1")
    assert result.exit_code == 1 and "did you mean 'lr'" in " ".join(result.output.split())
    result = invoke("run", "generated/two.sh", "--dry-run", "--", "launch.nnodes=2")
    assert result.exit_code == 1 and "launch.* overrides" in " ".join(result.output.split())


def test_gpu_recipe_on_this_cpu_machine_is_explained(tmp_path, monkeypatch, tiny_model_dir):
    """A real run refuses; a dry run (preparing a cluster job on a laptop) warns and prints the plan."""
    monkeypatch.chdir(tmp_path)
    _, script = write_recipe(small_recipe(tiny_model_dir, "gpu", launch={"hardware": "h100", "n_gpus_per_node": 2}), tmp_path)
    monkeypatch.setattr(hardware, "detect_machine", lambda: Machine(2, (), "2.13.0+cpu", None))
    result = invoke("run", str(script))
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "error:" in message and "2 x h100" in message and "CPU-only build" in message
    assert not (tmp_path / "runs").exists()
    dry = invoke("run", str(script), "--dry-run")
    assert dry.exit_code == 0, dry.output
    message = " ".join(dry.output.split())
    assert "warning:" in message and "2 x h100" in message and "error:" not in message
    assert "Would run:" in dry.output and "--nproc-per-node 2" in dry.output


def _recipe(**launch):
    return small_recipe("/nowhere", launch={"strategy": "fsdp2", **launch})


H100 = Gpu("NVIDIA H100 80GB HBM3", 79.6)


def test_check_hardware_counts_and_types():
    with pytest.raises(Exception, match="has 2 x NVIDIA H100"):
        hardware.check_hardware(_recipe(hardware="h100", n_gpus_per_node=4), Machine(32, (H100, H100), "2.8", "12.4"))
    ok = hardware.check_hardware(_recipe(hardware="h100", n_gpus_per_node=2), Machine(32, (H100,) * 4, "2.8", "12.4"))
    assert ok.warnings == [] and "Using 2 of this machine's 4 GPUs." in ok.notes
    # Another type with enough memory runs, with a warning; with less memory it is refused.
    a100 = Gpu("NVIDIA A100-SXM4-80GB", 79.2)
    assert hardware.check_hardware(_recipe(hardware="h100", n_gpus_per_node=1), Machine(8, (a100,), "2.8", "12.4")).warnings
    with pytest.raises(Exception, match="sized for h200"):
        hardware.check_hardware(_recipe(hardware="h200", n_gpus_per_node=1), Machine(8, (H100,), "2.8", "12.4"))
    # 'h20' is not 'H200'.
    assert not hardware.matches_type("h20", "NVIDIA H200") and hardware.matches_type("h20", "NVIDIA H20")
    assert hardware.matches_type("rtx4090", "NVIDIA GeForce RTX 4090") and hardware.matches_type("a100-80g", a100.name)


def test_check_hardware_cpu():
    report = hardware.check_hardware(_recipe(n_gpus_per_node=4), Machine(2, (), "2.13", None))
    assert any("4 processes on 2 CPU cores" in w for w in report.warnings)
    assert hardware.check_hardware(_recipe(n_gpus_per_node=2), Machine(2, (), "2.13", None)).warnings == []


def _has_step(run_dir: Path) -> bool:
    try:
        return bool(read_metrics(run_dir))
    except (OSError, ValueError):  # not written yet, or a line half written
        return False


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_tune_run_resumes(tiny_model_dir, tmp_path):
    """Ctrl-C on a 2-process `tune run`: the workers save a checkpoint, `tune run` exits 130 with no
    torchrun traceback or failure report; running again resumes."""
    steps = 4
    recipe = small_recipe(tiny_model_dir, "sig", trainer={"total_training_steps": steps, "save_freq": -1})
    _, script = write_recipe(recipe, tmp_path)
    run_dir = tmp_path / "runs" / "sig"
    # No wrapped lines in the messages checked below; torchrun's master port (PET_MASTER_PORT is its
    # --master-port) free, not the default 29500 another run on this machine may hold.
    env = worker_env(COLUMNS="300", PET_MASTER_PORT=str(free_port()))
    proc = subprocess.Popen(tune_cmd("run", str(script)), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _has_step(run_dir):
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no training step within 240 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers to `tune run`
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-4000:]
    assert "Traceback" not in out and "ChildFailedError" not in out and "Aborted" not in out, out[-4000:]
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
    assert len(ckpts) == 1, out[-4000:]
    stopped_at = int(ckpts[0].name.split("_")[1])
    assert 1 <= stopped_at < steps
    assert f"Interrupted at step {stopped_at}/{steps}" in out
    assert f"Resume with `tune run {script}`" in out
    assert f"Latest checkpoint: {Path('runs/sig/checkpoints') / ckpts[0].name}" in " ".join(out.split())

    again = run(tune_cmd("run", str(script)), timeout=300, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout[-4000:]
    assert f"Resumed from runs/sig/checkpoints/step_{stopped_at} (step {stopped_at}/{steps})" in again.stdout
    assert sorted(read_metrics(run_dir)) == list(range(1, steps + 1))


def test_status_file_turns_a_quiet_worker_exit_into_130(monkeypatch):
    """A torchrun worker that stopped on request exits 0 (no torchrun failure report) and reports 130
    through the status file, which `tune run`'s runner turns back into 130."""
    from tunecli.launch.runner import run_child
    from tunecli.train import report_status

    child = (
        "import os, sys; os.environ.update(WORLD_SIZE='2', RANK='0'); "
        "from tunecli.train import report_status; sys.exit(report_status(130))"
    )
    assert run_child([sys.executable, "-c", child]).returncode == 130
    failing = "import sys; from tunecli.train import report_status; sys.exit(report_status(1))"
    assert run_child([sys.executable, "-c", failing]).returncode == 1
    # Alone (no tune run, or one process) the trainer's own code stands.
    monkeypatch.delenv("TUNECLI_STATUS_FILE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert report_status(130) == 130


def test_ctrl_c_reaches_torchrun_workers_not_torchrun():
    from tunecli.launch.runner import _runs_module

    assert _runs_module(["/usr/bin/python", "-m", "tunecli.train", "--config", "x.yaml"], "tunecli.train")
    assert _runs_module(["python", "-u", "-m", "tunecli.train"], "tunecli.train")
    torchrun = ["--nproc-per-node", "2", "--standalone", "-m", "tunecli.train", "--config", "x.yaml"]
    assert not _runs_module(["/usr/bin/python", "-m", "torch.distributed.run", *torchrun], "tunecli.train")
    assert not _runs_module(["/usr/bin/python", "/usr/bin/torchrun", *torchrun], "tunecli.train")
    assert not _runs_module(["python", "-c", "from multiprocessing.spawn import spawn_main"], "tunecli.train")
