"""Checkpoints survive crashes and full disks: fsync'ed before the commit, verified on load (falling back
to the previous good one), pruned, never non-finite, resumed only when the math is unchanged."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_train_e2e import train, write_recipe


def _config(*overrides: str) -> dict:
    from tunecli.config.io import dump_recipe, recipe_from_dict

    return dump_recipe(recipe_from_dict({}, list(overrides)))


def _model(seed: int = 0, width: int = 8):
    """A small model and an AdamW that has taken one step (so the optimizer has state to save)."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, width)).sum().backward()
    optimizer.step()
    return model, optimizer


def _save(run_dir: Path, step: int, model, optimizer, config: dict | None = None, **state) -> Path:
    from tunecli.trainer import checkpoint

    return checkpoint.save(run_dir, step, model, optimizer, {"step": step, **state}, config or _config())


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("."))


# -- 1. durable commit ------------------------------------------------------------------------------
def test_every_file_and_directory_is_fsynced_before_the_commit_and_the_parent_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    model, optimizer = _model()
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    final = _save(tmp_path, 1, model, optimizer)

    commits = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(final)]
    assert len(commits) == 1, events
    tmp = events[commits[0]][1]
    synced_before = {e[1] for e in events[: commits[0]] if e[0] == "fsync"}
    written = {str(Path(tmp) / p.relative_to(final)) for p in final.rglob("*")}  # files and directories
    assert written - synced_before == set(), "fsync'ed before the rename"
    assert tmp in synced_before
    assert ("fsync", str(final.parent)) in events[commits[0] :], "the parent directory after it"


# -- 2. verified load, fallback to the previous good checkpoint --------------------------------------
def _truncate_shard(ckpt: Path) -> None:
    shard = next((ckpt / "model_optim").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _flip_a_byte(ckpt: Path) -> None:
    shard = next((ckpt / "model_optim").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def _written_by_another_model(ckpt: Path) -> None:
    """A checkpoint whose every file verifies but whose tensors do not fit this model: DCP fails to load it."""
    shutil.rmtree(ckpt)
    other, other_optimizer = _model(seed=5, width=16)
    _save(ckpt.parent.parent, 2, other, other_optimizer)


CORRUPTIONS = {
    "truncated .distcp": (_truncate_shard, "truncated"),
    "missing trainer state": (lambda c: (c / "trainer_state.pt").unlink(), "trainer_state.pt is missing"),
    "a file changed": (_flip_a_byte, "changed after it was written"),
    "no manifest": (lambda c: (c / "manifest.json").unlink(), "has no manifest.json"),
    "unreadable manifest": (lambda c: (c / "manifest.json").write_text("{"), "manifest.json is unreadable"),
    "DCP load error": (_written_by_another_model, "loading it failed"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_bad_latest_checkpoint_is_skipped_with_a_warning_and_the_previous_one_loads(tmp_path, capsys, corruption):
    import torch

    from tunecli.trainer import checkpoint

    corrupt, problem = CORRUPTIONS[corruption]
    model, optimizer = _model()
    _save(tmp_path, 1, model, optimizer)
    at_step_1 = _weights(model)
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    _save(tmp_path, 2, model, optimizer)
    corrupt(tmp_path / "checkpoints" / "step_2")
    capsys.readouterr()

    fresh, fresh_optimizer = _model(seed=1)
    found = checkpoint.resume(tmp_path, fresh, fresh_optimizer, _config(), total_steps=10)
    assert found is not None and found[0].name == "step_1" and found[1]["step"] == 1
    assert _same(_weights(fresh), at_step_1)
    warning = " ".join(capsys.readouterr().err.split())
    assert "step_2" in warning and problem in warning, warning


def test_no_usable_checkpoint_refuses_to_resume_and_names_each_problem(tmp_path):
    from tunecli.errors import TuneError
    from tunecli.trainer import checkpoint

    model, optimizer = _model()
    for step in (1, 2):
        _save(tmp_path, step, model, optimizer)
    _truncate_shard(tmp_path / "checkpoints" / "step_2")
    (tmp_path / "checkpoints" / "step_1" / "trainer_state.pt").unlink()
    with pytest.raises(TuneError) as refused:
        checkpoint.resume(tmp_path, model, optimizer, _config(), total_steps=10)
    message = str(refused.value)
    assert "\n" not in message and "--no-resume" in message
    assert "step_2: model_optim/__0_0.distcp is" in message and "step_1: trainer_state.pt is missing" in message


def test_a_run_without_checkpoints_starts_fresh(tmp_path):
    from tunecli.trainer import checkpoint

    model, optimizer = _model()
    assert checkpoint.resume(tmp_path, model, optimizer, _config(), total_steps=10) is None


# -- 3. nothing non-finite is written or exported -----------------------------------------------------
def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    import torch

    from tunecli.errors import TuneError

    model, optimizer = _model()
    _save(tmp_path, 1, model, optimizer)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(TuneError) as refused:
        _save(tmp_path, 2, model, optimizer)
    message = str(refused.value)
    assert "NaN or inf" in message and "0.weight" in message and "step_1" in message and "\n" not in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1"]


@pytest.fixture
def lora_run(tmp_path, tiny_model_dir):
    """A run directory with one real LoRA checkpoint of the tiny model (no training: one AdamW step)."""
    import torch

    from tunecli.config.io import dump_recipe, load_recipe
    from tunecli.trainer.policy import load_policy

    run_dir = tmp_path / "run"
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, run_dir))
    policy = load_policy(recipe, torch.device("cpu"), with_reference=False)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    sum(p.sum() for p in policy.trainable_parameters()).backward()
    optimizer.step()

    def save(step: int):
        _save(run_dir, step, policy.model, optimizer, dump_recipe(recipe))

    return run_dir, policy, save


def _export(run_dir: Path, *args: str):
    from tunecli.cli import app

    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(run_dir / "out"), *args])
    return result.exit_code, " ".join(result.output.split())


EXPORT_CORRUPTIONS = {
    "truncated .distcp": (_truncate_shard, "model_optim/__0_0.distcp is"),
    "missing trainer state": (lambda c: (c / "trainer_state.pt").unlink(), "trainer_state.pt is missing"),
}


@pytest.mark.slow
@pytest.mark.parametrize("corruption", EXPORT_CORRUPTIONS, ids=list(EXPORT_CORRUPTIONS))
def test_export_of_a_damaged_checkpoint_is_one_clear_paragraph(lora_run, corruption):
    run_dir, _policy, save = lora_run
    save(1)
    save(2)
    corrupt, problem = EXPORT_CORRUPTIONS[corruption]
    corrupt(run_dir / "checkpoints" / "step_2")
    code, output = _export(run_dir)
    assert code == 1 and "Traceback" not in output, output
    assert "Cannot export" in output and "step_2" in output and problem in output and "--step N (finished: 1" in output
    assert not (run_dir / "out").exists()
    assert _export(run_dir, "--step", "1")[0] == 0  # the way out the message names


@pytest.mark.slow
def test_export_refuses_non_finite_weights(lora_run, monkeypatch):
    import torch

    from tunecli.trainer import checkpoint

    run_dir, policy, save = lora_run
    lora = next(p for name, p in policy.model.named_parameters() if "lora_B" in name)
    with torch.no_grad():
        lora.fill_(float("nan"))
    monkeypatch.setattr(checkpoint, "refuse_nonfinite", lambda *a: None, raising=False)  # write it anyway
    save(1)
    code, output = _export(run_dir)
    assert code == 1 and "Traceback" not in output, output
    assert "NaN or inf" in output and "lora_B" in output
    assert not (run_dir / "out").exists()


# -- 4. pruning and stale directories -----------------------------------------------------------------
@pytest.mark.parametrize("keep,expected", [(2, ["step_4", "step_5"]), (None, [f"step_{s}" for s in range(1, 6)])])
def test_only_the_last_max_checkpoints_are_kept(tmp_path, keep, expected):
    model, optimizer = _model()
    config = _config(f"trainer.max_checkpoints={'null' if keep is None else keep}")
    for step in range(1, 6):
        _save(tmp_path, step, model, optimizer, config)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == expected


def test_stale_directories_of_a_killed_run_are_removed_at_start(tmp_path):
    from tunecli.trainer import checkpoint

    model, optimizer = _model()
    for step in (1, 2, 3):
        _save(tmp_path, step, model, optimizer)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step_4" / "model_optim").mkdir(parents=True)  # killed while writing step 4
    shutil.copytree(root / "step_1", root / ".pruned-step_1")  # killed while pruning
    shutil.copytree(root / "step_2", root / ".old-step_2")  # killed after committing a re-save of step 2
    (root / "step_3").rename(root / ".old-step_3")  # killed between setting step 3 aside and the commit
    checkpoint.remove_stale(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step_1", "step_2", "step_3"]
    fresh, fresh_optimizer = _model(seed=1)
    assert checkpoint.resume(tmp_path, fresh, fresh_optimizer, _config(), total_steps=10)[0].name == "step_3"


# -- 5. a full disk -------------------------------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _no_space_after_some_bytes(obj, f, *args, **kwargs):
    if isinstance(f, (str, Path)):
        Path(f).write_bytes(b"x" * 100)  # a partial file, as a full disk leaves it
    _no_space()


DISK_FULL_AT = {
    "DCP shard": ("torch.distributed.checkpoint.filesystem._write_item", _no_space),
    "RNG or trainer state": ("torch.save", _no_space_after_some_bytes),
    "manifest": ("tunecli.trainer.manifest.write_manifest", _no_space),
}


@pytest.mark.parametrize("where", DISK_FULL_AT, ids=list(DISK_FULL_AT))
def test_a_full_disk_is_a_clear_error_and_leaves_nothing_half_written(tmp_path, monkeypatch, where):
    import torch

    from tunecli.errors import TuneError

    model, optimizer = _model()
    _save(tmp_path, 1, model, optimizer)
    big = torch.nn.Linear(1000, 1000)  # 4 MB of weights + 8 MB of AdamW moments
    big_optimizer = torch.optim.AdamW(big.parameters())
    big(torch.randn(1, 1000)).sum().backward()
    big_optimizer.step()
    target, failure = DISK_FULL_AT[where]
    monkeypatch.setattr(target, failure, raising=False)
    with pytest.raises(TuneError) as refused:
        _save(tmp_path / "big", 2, big, big_optimizer)
    message = str(refused.value)
    assert f"disk full at {tmp_path / 'big' / 'checkpoints'}, needed ~12 MB" in message and "\n" not in message
    assert _leftovers(tmp_path / "big") == []  # the partial temp directory is gone
    monkeypatch.undo()
    _save(tmp_path / "big", 2, big, big_optimizer)  # the rerun is not blocked
    assert (tmp_path / "big" / "checkpoints" / "step_2" / "manifest.json").is_file()


# -- 6. resume only when the math is unchanged ----------------------------------------------------------
VAL_SIZE_CHANGES = [
    # (recipe, resume refused?)
    ((), True),  # a synthetic dataset: the held-out questions are excluded from train
    (("data.dataset=custom", "data.train_files=t.jsonl"), True),  # held-out rows carved from the training file
    (("data.dataset=gsm8k", "data.train_files=t.jsonl"), True),
    (("data.dataset=custom", "data.train_files=t.jsonl", "data.val_files=v.jsonl"), False),  # their own file
]


@pytest.mark.parametrize("recipe,refused", VAL_SIZE_CHANGES)
def test_changing_val_size_on_resume_is_refused_unless_held_out_rows_have_their_own_file(recipe, refused):
    from tunecli.trainer.checkpoint import math_differences

    diffs = math_differences(_config(*recipe, "data.val_size=4"), _config(*recipe, "data.val_size=8"))
    assert [d.split(":")[0] for d in diffs] == (["data.val_size"] if refused else [])
    if refused:
        assert "4 -> 8" in diffs[0] and "data.val_files" in diffs[0]


SCHEDULE_CHANGES = [
    # (recipe overrides, saved total, new total, refused field or None)
    (("actor.lr_scheduler_type=cosine", "trainer.total_training_steps=10"), 6, 10, "trainer.total_training_steps"),
    (("actor.lr_scheduler_type=cosine",), 6, 12, "trainer.total_epochs"),  # the epochs decide the length
    (("actor.lr_scheduler_type=cosine", "trainer.total_training_steps=6"), 6, 6, None),
    (("actor.lr_scheduler_type=constant", "trainer.total_training_steps=10"), 6, 10, None),  # length is free
]


@pytest.mark.parametrize("overrides,saved,total,field", SCHEDULE_CHANGES)
def test_a_new_run_length_is_refused_when_it_reshapes_a_cosine_schedule(tmp_path, overrides, saved, total, field):
    from tunecli.errors import TuneError
    from tunecli.trainer import checkpoint

    model, optimizer = _model()
    config = _config(*overrides)
    _save(tmp_path, 1, model, optimizer, config, schedule_steps=saved)
    if field is None:
        assert checkpoint.resume(tmp_path, model, optimizer, config, total_steps=total)[0].name == "step_1"
        return
    with pytest.raises(TuneError) as refused:
        checkpoint.resume(tmp_path, model, optimizer, config, total_steps=total)
    message = str(refused.value)
    assert refused.value.field == field and f"{saved} -> {total} steps" in message and "--no-resume" in message



@pytest.mark.parametrize("schedule,refused", [("cosine", True), ("constant", False)])
def test_a_new_run_length_in_minutes_is_refused_when_it_reshapes_a_cosine_schedule(tmp_path, schedule, refused):
    from tunecli.errors import TuneError
    from tunecli.trainer import checkpoint

    model, optimizer = _model()
    common = (f"actor.lr_scheduler_type={schedule}", "trainer.total_training_steps=100")
    _save(tmp_path, 1, model, optimizer, _config(*common, "trainer.total_training_minutes=10"), schedule_steps=100)
    longer = _config(*common, "trainer.total_training_minutes=20")
    if not refused:
        assert checkpoint.resume(tmp_path, model, optimizer, longer, total_steps=100)[0].name == "step_1"
        return
    with pytest.raises(TuneError) as error:
        checkpoint.resume(tmp_path, model, optimizer, longer, total_steps=100)
    assert error.value.field == "trainer.total_training_minutes" and "10.0 -> 20.0 minutes" in str(error.value)
    assert "keep it at 10.0" in str(error.value)
    unset = _config(*common)  # a run measured in steps, resumed with a length in minutes
    _save(tmp_path, 2, model, optimizer, unset, schedule_steps=100)
    with pytest.raises(TuneError) as error:
        checkpoint.resume(tmp_path, model, optimizer, _config(*common, "trainer.total_training_minutes=5"), total_steps=100)
    assert "None -> 5.0 minutes" in str(error.value) and "keep it unset" in str(error.value)

# -- 7. metrics.jsonl survives a kill while it is rewritten ----------------------------------------------
class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_a_kill_while_metrics_are_rewritten_loses_no_line(tmp_path, monkeypatch):
    from tunecli.trainer.metrics import MetricsLogger

    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "reward/mean": s / 10}) + "\n" for s in range(1, 6)]
    metrics.write_text("".join(lines))
    real_open = Path.open

    def open_then_die(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        if "w" in mode:  # the file is opened (truncated, for an in-place rewrite) and the process dies
            f.close()
            raise _Killed
        return f

    monkeypatch.setattr(Path, "open", open_then_die)
    with pytest.raises(_Killed):
        MetricsLogger(tmp_path, total_steps=5, start_step=3)
    monkeypatch.undo()
    assert metrics.read_text() == "".join(lines)  # the old lines, whole
    MetricsLogger(tmp_path, total_steps=5, start_step=3)  # the rerun drops the steps after its checkpoint
    assert metrics.read_text() == "".join(lines[:3])


# -- the whole path, through the real trainer --------------------------------------------------------------
@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_checkpoint_and_refuses_a_reshaped_schedule(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    config = write_recipe(tmp_path, tiny_model_dir, run_dir, **{
        "trainer.total_training_steps": 3, "trainer.test_freq": -1, "trainer.val_before_train": False,
        "actor.lr_scheduler_type": "cosine", "actor.ppo_epochs": 1})
    first = train(config, "trainer.total_training_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    # The run was 2 steps long: resuming it with 3 would reshape its cosine schedule.
    refused = train(config)
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "Traceback" not in message, refused.stderr[-3000:]
    assert "trainer.total_training_steps: the run's length 2 -> 3 steps" in message and "--no-resume" in message
    # The latest checkpoint is damaged: a warning, and the run continues from the one before.
    _truncate_shard(run_dir / "checkpoints" / "step_2")
    resumed = train(config, "trainer.total_training_steps=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Skipping checkpoint" in resumed.stderr and "step_2" in resumed.stderr
    assert f"Resumedfrom{run_dir / 'checkpoints' / 'step_1'}" in "".join(resumed.stdout.split())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward/mean" in r] == [1, 2]


@pytest.mark.parametrize("resumed_at,kept", [
    (3, ["train 1", "train 2", "val 2", "train 3"]),  # a finished run started again validates again: once
    (2, ["train 1", "train 2", "val 2"]),  # mid-run: the validation of the checkpoint's step is not re-run
])
def test_a_restarted_run_logs_each_validation_once(tmp_path, resumed_at, kept):
    from tunecli.trainer.metrics import MetricsLogger

    lines = [{"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.2}, {"step": 2, "val/acc": 0.5},
             {"step": 3, "reward/mean": 0.3}, {"step": 3, "val/acc": 0.7}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    MetricsLogger(tmp_path, total_steps=3, start_step=resumed_at)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [f"{'val' if 'val/acc' in r else 'train'} {r['step']}" for r in records] == kept
