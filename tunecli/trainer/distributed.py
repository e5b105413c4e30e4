"""Processes, ranks and FSDP2: everything the trainer needs to run on one process or many.

torchrun starts one process per GPU (or per CPU share) and sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; ``init()`` reads them and joins the process group (gloo on CPU, nccl on
CUDA). A plain ``python -m tunecli.train`` is a world of one and never creates a process group, so
every helper here is a no-op there and the trainer has one code path.

The data-parallel contract the trainer relies on:
  * every rank takes a contiguous share of whole GRPO groups (``shard_groups``), so group advantages
    are computed locally and a group never straddles ranks;
  * FSDP2 averages gradients over ranks, so a loss normalised by *global* counts on every rank
    (the trainer's job) gives exactly the gradient of one process over the whole batch;
  * every rank runs the same number of forward/backward passes (FSDP all-gathers in each one).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist

from tunecli.errors import TuneError

if TYPE_CHECKING:
    from tunecli.config.schema import Recipe

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process, no process group


_INFO: DistInfo | None = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def choose_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's CUDA device when CUDA is present, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TuneError(
            "trainer.device is 'cuda' but torch sees no CUDA device (torch "
            f"{torch.__version__}). Set trainer.device=auto or cpu, or install a CUDA build of torch."
        )
    return torch.device("cuda", local_rank % torch.cuda.device_count())


_OWNED_GROUP: list[bool] = []  # non-empty while init() holds the process group it created


def init(device: str = "auto", timeout_minutes: int = 30) -> DistInfo:
    """Read torchrun's environment, pick the device and backend, and join the process group."""
    global _INFO
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = choose_device(device, local_rank)
    backend = None
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            _OWNED_GROUP.append(True)
            dist.init_process_group(
                backend=backend,
                timeout=datetime.timedelta(minutes=timeout_minutes),
                # nccl wants to know the device up front; gloo ignores it.
                device_id=dev if dev.type == "cuda" else None,
            )
    if dev.type == "cpu":
        # Processes on one machine share its cores; oversubscribing them makes every rank slower.
        local_world = _env_int("LOCAL_WORLD_SIZE", 1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    _INFO = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)
    return _INFO


def info() -> DistInfo:
    """The DistInfo of ``init()``, or a single-process CPU/CUDA default when init was not called."""
    return _INFO if _INFO is not None else DistInfo(0, 1, 0, choose_device("auto"), None)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown() -> None:
    global _INFO
    # Only the group init() created: a colocated vLLM engine creates its own one-process group, which
    # its own shutdown destroys (destroying it here broke the next engine in the same process).
    if _OWNED_GROUP and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED_GROUP.clear()
    _INFO = None


# ---------------------------------------------------------------------------------------------
# Data parallel
# ---------------------------------------------------------------------------------------------


def shard_groups(items: list[T], group_size: int, *, chunks: int = 1) -> list[T]:
    """This rank's share of ``items``, cut only between whole groups of ``group_size``.

    ``items`` is group-major (item k belongs to group k // group_size). With 8 prompts and 2 ranks,
    rank 0 gets prompts 0-3 and rank 1 prompts 4-7; with group_size 4 a group of 4 samples always
    lands on one rank, so advantages need no communication.

    ``chunks`` > 1 (the mini-batches of one step) splits ``items`` into that many consecutive chunks
    first and gives every rank its contiguous share *of each chunk*, in chunk order. Cutting the
    rank's list back into ``chunks`` equal parts then gives, on every rank together, exactly the
    mini-batches one process would use, so N ranks take the same optimizer steps as one.
    """
    if group_size < 1 or chunks < 1:
        raise ValueError(f"group_size and chunks must be >= 1, got {group_size} and {chunks}")
    if len(items) % group_size:
        raise ValueError(f"{len(items)} items do not form whole groups of {group_size}")
    n_groups, world = len(items) // group_size, world_size()
    if n_groups % (chunks * world):
        what = f"{chunks} mini-batches x {world} ranks" if chunks > 1 else f"{world} ranks"
        raise TuneError(
            f"{n_groups} groups cannot be split evenly over {what}: every rank must get the same "
            "number of whole groups of each mini-batch. Make data.train_batch_size and "
            f"actor.ppo_mini_batch_size multiples of the number of processes ({world}).",
            field="data.train_batch_size",
        )
    chunk_len = len(items) // chunks
    per_rank = chunk_len // world
    start = rank() * per_rank
    return [x for c in range(chunks) for x in items[c * chunk_len + start : c * chunk_len + start + per_rank]]


def all_reduce_mean(metrics: dict[str, float]) -> dict[str, float]:
    """Average each metric over ranks (one collective for the whole dict).

    Every rank must pass the same keys; they are sorted so that the order of insertion does not matter.
    """
    if not _active():
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)  # [K]
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= dist.get_world_size()
    return dict(zip(keys, values.tolist(), strict=True))


def all_reduce_sum(value: float) -> float:
    """Sum a number over ranks: the global token or sample count a loss is normalised by."""
    return float(all_reduce_sum_tensor(torch.tensor([float(value)]))[0])


def all_reduce_sum_tensor(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks in float64 (batch statistics, e.g. REINFORCE++'s whitening); on the CPU."""
    if not _active():
        return values.to(torch.float64)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    summed = values.detach().to(device=device, dtype=torch.float64)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.cpu()


# ---------------------------------------------------------------------------------------------
# FSDP2
# ---------------------------------------------------------------------------------------------


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of an HF causal LM (also inside a peft wrapper).

    HF names its block classes in ``_no_split_modules`` (LlamaDecoderLayer, Qwen2DecoderLayer ...);
    matching on that list finds them whatever the attribute path (model.layers, transformer.h ...).
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:  # not an HF model: fall back to the children of the largest ModuleList
        lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
        layers = list(max(lists, key=len)) if lists else []
    return layers


def mixed_precision_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 compute where the hardware has it (CUDA with bf16); None = keep fp32 (CPU)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works with frozen LoRA bases and FSDP2)."""
    target = model
    # peft's PeftModel -> LoraModel -> the HF model, which owns gradient_checkpointing_enable.
    while not hasattr(target, "gradient_checkpointing_enable") and hasattr(target, "base_model"):
        target = target.base_model
    if hasattr(target, "gradient_checkpointing_enable"):
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(target, "config"):
            target.config.use_cache = False  # the KV cache is useless (and wasteful) in training passes
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    layer_types = {type(m) for m in decoder_layers(model)}
    apply_activation_checkpointing(model, check_fn=lambda m: type(m) in layer_types)


def compile_decoder_layers(model: torch.nn.Module) -> None:
    """torch.compile each decoder layer in place (torchtune's regional compile, before FSDP2 shards).

    The layers share one compiled graph, so compiling costs one layer's worth however deep the
    model; ``dynamic=True`` because every GRPO batch has other lengths. ``Module.compile`` keeps the
    parameter names, so checkpoints and the weight sync are unchanged.

    Frozen input embeddings (LoRA) are made to return a tensor that requires grad, as every later
    layer's input does: otherwise the first layer's input differs in that, and it compiles apart.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and not any(p.requires_grad for p in embeddings.parameters()):
        embeddings.register_forward_hook(lambda module, args, output: output.requires_grad_(torch.is_grad_enabled()))
    for layer in decoder_layers(model):
        layer.compile(dynamic=True)


def wrap_policy(model: torch.nn.Module, recipe: Recipe) -> torch.nn.Module:
    """Put ``model`` on this rank's device and, for fsdp2 over several ranks, shard it.

    fully_shard each decoder layer (the unit of all-gather / reduce-scatter), then the root, which
    keeps embeddings, final norm and LM head. LoRA models work as is: FSDP2 shards frozen base weights
    and trainable adapters in the same group and only reduces the gradients that exist.
    """
    dist_info = info()
    if recipe.model.enable_gradient_checkpointing:
        enable_activation_checkpointing(model)
    if recipe.actor.use_torch_compile:
        compile_decoder_layers(model)
    if recipe.launch.strategy != "fsdp2" or not _active():
        return model.to(dist_info.device)

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(dist_info.device.type, (dist.get_world_size(),), mesh_dim_names=("fsdp",))
    compute = mixed_precision_dtype(dist_info.device)
    # Params are cast to bf16 for compute; gradients are reduced in fp32 (verl's default): summing
    # many ranks' bf16 gradients loses the small updates LoRA depends on.
    mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None)
    # Offload only means something when the compute device is not the CPU already.
    offload = (
        CPUOffloadPolicy()
        if dist_info.device.type == "cuda" and (recipe.actor.param_offload or recipe.actor.optimizer_offload)
        else None
    )
    kwargs: dict[str, Any] = {"mesh": mesh, "mp_policy": mp}
    if offload is not None:
        kwargs["offload_policy"] = offload
    else:
        model = model.to(dist_info.device)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    if hasattr(model, "generate"):
        # generate() bypasses the root's forward; registering it runs FSDP's root hooks (lazy init,
        # unshard) around it. Use it inside ``unsharded`` so the layers do not all-gather per token.
        register_fsdp_forward_method(model, "generate")
    return model


def wrap_reference(model: torch.nn.Module, recipe: Recipe) -> torch.nn.Module:
    """Full fine-tuning's frozen reference on this rank's device (never sharded), compiled like the policy."""
    if recipe.actor.use_torch_compile:
        compile_decoder_layers(model)
    return model.to(info().device)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def unsharded(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Hold every FSDP unit's full parameters for a block of forwards without communication.

    HF ``generate`` runs a different number of forward passes on each rank (sequences stop at
    different lengths); with sharded layers each pass all-gathers, so the ranks would wait on each
    other forever. Gathering everything once up front (a collective every rank reaches) and keeping
    it until the block ends makes generation purely local. Costs one full copy of the weights.
    """
    if not is_sharded(model):
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        with torch.no_grad():
            yield model
    finally:
        for unit in units:
            unit.reshard()
            # The root keeps its params between forward and backward; layers free them (FSDP2 defaults).
            unit.set_reshard_after_forward(unit is not model, recurse=False)
