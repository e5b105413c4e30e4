"""tunecli.trainer.distributed: sharding of groups, metrics, and FSDP2 (gloo) matching one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunecli.errors import TuneError
from tunecli.trainer import distributed as D

sys.path.insert(0, str(Path(__file__).parent))
from torchrun_helpers import (  # noqa: E402
    REPO_ROOT, checkpoint_weights, free_port, read_metrics, run, small_recipe, torchrun_cmd, worker_env, write_recipe,
)

WORKER = str(REPO_ROOT / "tests" / "dist_worker.py")


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(D, "rank", lambda: rank)
    monkeypatch.setattr(D, "world_size", lambda: world)


def test_shard_groups_gives_each_rank_whole_contiguous_groups(monkeypatch):
    items = [f"p{g}s{s}" for g in range(4) for s in range(3)]  # 4 groups of 3, group-major
    shares = []
    for r in range(2):
        _as_rank(monkeypatch, r, 2)
        shares.append(D.shard_groups(items, group_size=3))
    assert shares[0] == items[:6] and shares[1] == items[6:]
    for share in shares:
        assert len({s[:2] for s in share}) == 2  # two groups, none split


def test_shard_groups_per_mini_batch_rebuilds_the_single_process_mini_batches(monkeypatch):
    prompts = list(range(8))  # one step: 2 mini-batches of 4 prompts (0-3, 4-7) for one process
    shares = []
    for r in range(2):
        _as_rank(monkeypatch, r, 2)
        shares.append(D.shard_groups(prompts, group_size=1, chunks=2))
    assert shares == [[0, 1, 4, 5], [2, 3, 6, 7]]
    # Each rank cuts its share into 2 mini-batches; together they are the one-process mini-batches.
    for m in range(2):
        assert sorted(shares[0][2 * m : 2 * m + 2] + shares[1][2 * m : 2 * m + 2]) == prompts[4 * m : 4 * m + 4]
    with pytest.raises(TuneError, match="mini-batches"):
        D.shard_groups(prompts, group_size=1, chunks=8)  # 1 prompt per mini-batch over 2 ranks


def test_shard_groups_single_process_is_identity():
    assert D.shard_groups([1, 2, 3, 4], group_size=2) == [1, 2, 3, 4]


def test_shard_groups_refuses_uneven_split(monkeypatch):
    _as_rank(monkeypatch, 0, 2)
    with pytest.raises(TuneError, match="train_batch_size"):
        D.shard_groups(list(range(9)), group_size=3)  # 3 groups over 2 ranks
    with pytest.raises(ValueError, match="whole groups"):
        D.shard_groups(list(range(7)), group_size=2)


def test_single_process_helpers_need_no_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.init(device="cpu")
    try:
        assert (info.rank, info.world_size, info.backend, info.device.type) == (0, 1, None, "cpu")
        assert D.is_main() and not torch.distributed.is_initialized()
        assert D.all_reduce_mean({"a": 1, "b": 2.5}) == {"a": 1.0, "b": 2.5}
        D.barrier()
    finally:
        D.shutdown()


def test_init_refuses_cuda_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TuneError, match="trainer.device"):
        D.init(device="cuda")


def test_decoder_layers_found_through_peft(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert [type(m).__name__ for m in D.decoder_layers(model)] == ["LlamaDecoderLayer"] * 2
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    assert len(D.decoder_layers(peft_model)) == 2


def test_wrap_policy_single_process_keeps_model_and_enables_checkpointing(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)  # B != 0: A gets gradients
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora)
    recipe = SimpleNamespace(
        launch=SimpleNamespace(strategy="fsdp2"),
        model=SimpleNamespace(enable_gradient_checkpointing=True),
        actor=SimpleNamespace(param_offload=False, optimizer_offload=False, use_torch_compile=False),
    )
    wrapped = D.wrap_policy(model, recipe)
    assert wrapped is model and not D.is_sharded(wrapped)  # a world of one is never sharded
    assert wrapped.base_model.model.is_gradient_checkpointing
    # Backward through checkpointed layers with a frozen base still reaches the adapter.
    wrapped.train()
    wrapped(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
    grads = [p.grad for n, p in wrapped.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def _toy_run(tiny_model_dir: Path, out: Path, nproc: int) -> dict:
    args = ["--model", str(tiny_model_dir), "--out", str(out)]
    cmd = torchrun_cmd(WORKER, *args, nproc=nproc) if nproc > 1 else [sys.executable, WORKER, *args]
    result = run(cmd, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def toy_runs(tiny_model_dir, tmp_path_factory):
    """The toy loop of dist_worker.py on 1 process (no process group) and on 2 (gloo, FSDP2)."""
    work = tmp_path_factory.mktemp("toy")
    return work, _toy_run(tiny_model_dir, work / "one.json", 1), _toy_run(tiny_model_dir, work / "two.json", 2)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["full", "lora+ckpt"])
def test_fsdp2_two_processes_match_one_process(toy_runs, variant):
    work, one, two = toy_runs
    assert (one["world"], one["backend"], two["world"], two["backend"]) == (1, None, 2, "gloo")
    assert two["metrics"] == {"rank": 0.5, "one": 1.0}
    one, two = one[variant], two[variant]
    assert (one["sharded"], two["sharded"]) == (False, True)
    assert one["losses"][0] > one["losses"][-1]  # it trained
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-5)
    w1, w2 = torch.load(work / f"one.json.{variant}.pt"), torch.load(work / f"two.json.{variant}.pt")
    assert w1.keys() == w2.keys() and len(w1) > 0
    if variant.startswith("lora"):
        assert all("lora_" in k for k in w1)  # adapter only; the base stayed frozen
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-4, msg=k)
    # generate() on the sharded model (ranks stopping at different lengths) neither hung nor drifted.
    assert one["gen"] == two["gen"]


# ---------------------------------------------------------------------------------------------
# The real trainer (python -m tunecli.train) on 1 and 2 processes, and across 2 "nodes"
# ---------------------------------------------------------------------------------------------
STEPS = 2
COMPARED = ["actor/entropy", "actor/kl", "actor/pg_loss", "actor/grad_norm", "response/length", "reward/mean"]


def _trainer(yaml: Path, *overrides: str, nproc: int = 1) -> list[str]:
    args = ["-m", "tunecli.train", "--config", str(yaml), *overrides]
    if nproc == 1:
        return [sys.executable, *args, "launch.n_gpus_per_node=1"]
    return torchrun_cmd(*args, nproc=nproc)


@pytest.fixture(scope="module")
def reference_run(tiny_model_dir, tmp_path_factory):
    """One process, STEPS steps, checkpoint every step: what every multi-process run must reproduce."""
    work = tmp_path_factory.mktemp("reference")
    yaml, _ = write_recipe(small_recipe(tiny_model_dir, trainer={"total_training_steps": STEPS}), work)
    result = run(_trainer(yaml, "trainer.experiment_name=one"), timeout=300, cwd=work)
    assert result.returncode == 0, result.stdout[-4000:]
    run_dir = work / "runs" / "one"
    return yaml, read_metrics(run_dir), checkpoint_weights(run_dir / "checkpoints" / f"step_{STEPS}", work)


def _assert_same_run(metrics: dict, weights: dict, reference, steps=range(1, STEPS + 1)) -> None:
    _, ref_metrics, ref_weights = reference
    for step in steps:
        for key in COMPARED:
            assert metrics[step][key] == pytest.approx(ref_metrics[step][key], rel=1e-3, abs=1e-6), (step, key)
    assert weights.keys() == ref_weights.keys()
    for k in ref_weights:
        # AdamW turns the tiny float differences of another reduction order into ~1e-5 weight noise;
        # a wrong batch split or normalisation moves weights by ~lr (1e-2) per step.
        torch.testing.assert_close(weights[k], ref_weights[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.slow
def test_trainer_two_processes_match_one_process(reference_run, tmp_path):
    yaml, ref_metrics, ref_weights = reference_run
    # The adapter really moved (LoRA B starts at zero) and the KL term became non-zero.
    assert any(v.abs().max() > 1e-4 for k, v in ref_weights.items() if "lora_B" in k)
    assert ref_metrics[STEPS]["actor/kl"] > 0
    result = run(_trainer(yaml, "trainer.experiment_name=two", nproc=2), timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    run_dir = tmp_path / "runs" / "two"
    shards = list((run_dir / "checkpoints" / f"step_{STEPS}" / "model_optim").glob("*.distcp"))
    assert len(shards) == 2  # saved by both ranks
    _assert_same_run(read_metrics(run_dir), checkpoint_weights(run_dir / "checkpoints" / f"step_{STEPS}", tmp_path), reference_run)


@pytest.mark.slow
def test_killed_two_process_run_resumes_on_one_process(reference_run, tmp_path):
    import os
    import signal
    import subprocess
    import time

    yaml = reference_run[0]
    run_dir = tmp_path / "runs" / "kr"
    proc = subprocess.Popen(
        _trainer(yaml, "trainer.experiment_name=kr", nproc=2), cwd=tmp_path, env=worker_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "step_1").is_dir():
            assert proc.poll() is None, "the 2-process run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        # A hard kill of torchrun and both workers (their own process groups) mid-run.
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = run(_trainer(yaml, "trainer.experiment_name=kr"), timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert "Resumed from" in resumed.stdout
    metrics = read_metrics(run_dir)
    assert max(metrics) == STEPS
    _assert_same_run(metrics, checkpoint_weights(run_dir / "checkpoints" / f"step_{STEPS}", tmp_path), reference_run)


@pytest.mark.slow
def test_two_nodes_rendezvous_on_one_machine(tiny_model_dir, tmp_path):
    """Two torchrun invocations (--nnodes 2, c10d rendezvous on 127.0.0.1), started by the rendered script."""
    import subprocess

    recipe = small_recipe(tiny_model_dir, "twonode", launch={"nnodes": 2, "n_gpus_per_node": 1},
                          trainer={"total_training_steps": 2})
    _, script = write_recipe(recipe, tmp_path)
    text = script.read_text()
    assert "--nnodes 2" in text and "--rdzv-backend c10d" in text
    env = worker_env(TUNE_RDZV_ENDPOINT=f"127.0.0.1:{free_port()}")
    nodes = [
        subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
        for _ in range(2)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                import os
                import signal

                os.killpg(node.pid, signal.SIGKILL)
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    metrics = read_metrics(tmp_path / "runs" / "twonode")
    assert sorted(metrics) == [1, 2]
    shards = list((tmp_path / "runs" / "twonode" / "checkpoints" / "step_2" / "model_optim").glob("*.distcp"))
    assert len(shards) == 2  # one per node's rank
