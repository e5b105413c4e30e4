"""The policy: model + tokenizer from transformers, a peft LoRA adapter or full weights, and its reference.

The reference for the KL term costs no memory with LoRA (the same base with the adapter disabled);
full fine-tuning keeps a frozen copy.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from tunecli.errors import TuneError
from tunecli.trainer import distributed
from tunecli.trainer.embedded import resolve_model_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Policy:
    model: torch.nn.Module  # what is trained (a PeftModel for LoRA)
    tokenizer: object
    model_path: str  # resolved local dir or hub id (what a vLLM engine loads)
    is_lora: bool
    frozen_reference: torch.nn.Module | None = None  # full fine-tuning only
    compute_copies: dict = field(default_factory=dict, repr=False)  # frozen weights in the compute dtype, reused

    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The reference model for KL: the adapter switched off (LoRA) or the frozen copy (full)."""
        if self.is_lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            assert self.frozen_reference is not None
            yield self.frozen_reference

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def cast_for_compute(self, compute_dtype: str) -> Iterator[None]:
        """actor.compute_dtype bfloat16: the frozen weights cast once for a block of passes instead of
        by autocast at every forward (``frozen_linear_weights_as``).

        And peft's LoRA layers stop casting their input to the adapter's fp32: autocast cast a bf16
        input up and straight back down for each adapter matmul (the same values, two copies).

        On the CPU the copies are kept between blocks (RAM, where a fresh copy costs page faults every
        step); on a GPU they are freed after each block, so the rollout engine gets that memory back.
        """
        if compute_dtype != "bfloat16":
            yield
            return
        on_cpu = next(self.model.parameters()).device.type == "cpu"
        with contextlib.ExitStack() as stack:
            stack.enter_context(frozen_linear_weights_as(torch.bfloat16, self.model, self.frozen_reference,
                                                         cache=self.compute_copies if on_cpu else None))
            if self.is_lora:
                from peft.helpers import disable_input_dtype_casting

                stack.enter_context(disable_input_dtype_casting(self.model))
            yield


# Longest sequence for which ``attn_implementation: auto`` picks eager attention on the CPU: eager
# materialises the [heads, L, L] score matrix per layer for backward, which grows with L squared.
EAGER_MAX_TOKENS = 1024


def attn_implementation(recipe, device: torch.device) -> str:
    """The model.attn_implementation to load with ('auto' resolved for this device and length)."""
    choice = recipe.model.attn_implementation
    if choice != "auto":
        return choice
    longest = recipe.data.max_prompt_length + recipe.data.max_response_length
    # On the CPU torch's SDPA kernels lose to plain matmul + softmax at short lengths (bf16 forward
    # + backward of SmolLM2-135M on 16 x 100 tokens: 1.68 s sdpa, 1.24 s eager; fp32: equal).
    return "eager" if device.type == "cpu" and longest <= EAGER_MAX_TOKENS else "sdpa"


def load_tokenizer(model_path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(recipe, device: torch.device, *, with_reference: bool = True) -> Policy:
    from transformers import AutoModelForCausalLM

    cfg = recipe.model
    model_path = resolve_model_path(cfg.path)
    try:
        tokenizer = load_tokenizer(model_path, cfg.trust_remote_code, cfg.revision)
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            revision=cfg.revision,
            dtype=DTYPES[cfg.dtype],
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=attn_implementation(recipe, device),
        )
    except OSError as e:
        raise TuneError(
            f"Could not load model.path = '{cfg.path}'{f' at revision {cfg.revision}' if cfg.revision else ''} ({e}). "
            "Give a local HF model directory, the embedded 'smollm2-135m', or a hub id this machine can download "
            f"or has in its Hugging Face cache (hf download {cfg.path}).",
            field="model.path",
        ) from None
    model.to(device)
    model.config.use_cache = False  # training forward passes; generate() turns the cache on itself
    # Gradient checkpointing and FSDP2 sharding are applied by distributed.wrap_policy.
    if cfg.method == "lora":
        return Policy(_add_lora(model, cfg), tokenizer, model_path, is_lora=True)
    reference = None
    if with_reference:
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
    return Policy(model, tokenizer, model_path, is_lora=False, frozen_reference=reference)


def lora_config(cfg):
    from peft import LoraConfig

    if cfg.lora_rank < 1:
        raise TuneError("model.method is 'lora' but model.lora_rank is 0. Set model.lora_rank >= 1 (e.g. 16).", field="model.lora_rank")
    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,  # 'all-linear' is peft's own shorthand (every linear but the head)
        task_type="CAUSAL_LM",
        bias="none",
    )


def _add_lora(model, cfg):
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(cfg))
    except ValueError as e:
        raise TuneError(
            f"model.target_modules = {cfg.target_modules!r} does not fit this model ({e}). Use 'all-linear' or "
            "module names of the model, such as [q_proj, v_proj].",
            field="model.target_modules",
        ) from None


@contextlib.contextmanager
def frozen_linear_weights_as(
    dtype: torch.dtype, *models: torch.nn.Module | None, cache: dict | None = None
) -> Iterator[None]:
    """Hold the frozen Linear weights of ``models`` in ``dtype`` for a block of autocast passes.

    Autocast caches its casts only for leaf tensors that require grad, so a LoRA run's frozen base
    weights were cast fp32 -> bf16 again in every forward pass of a step (the prompt pass and each
    length bucket, for the policy and again for the reference). Casting them
    once here gives autocast the very values it would have produced (round to nearest), so the math
    is unchanged. A weight shared with a non-Linear module (an LM head tied to the input embeddings)
    keeps its fp32 storage, since the embedding lookup must keep returning fp32: the Linear gets its
    own cast copy for the block instead. Sharded (FSDP2) models are left alone.

    ``cache`` keeps the cast copies from one block to the next (frozen weights do not change between
    steps): the cast of the quickstart's 135M frozen weights, fresh memory each step, took ~0.1 s of a
    1 s update. A weight written in place since (a resumed run's load) is cast again.
    """
    linears: list[torch.nn.Linear] = []
    other: set[torch.nn.Parameter] = set()
    for model in models:
        if model is None or distributed.is_sharded(model):
            continue
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                linears.append(module)
            else:
                other.update(module.parameters(recurse=False))

    def frozen(p) -> bool:
        return p is not None and not p.requires_grad and p.is_floating_point() and p.dtype != dtype

    own = {id(p): p for m in linears for p in m.parameters(recurse=False) if frozen(p) and p not in other}
    originals = [(p, p.data) for p in own.values()]
    cache = {} if cache is None else cache
    tied = [(m, m.weight) for m in linears if frozen(m.weight) and m.weight in other]
    copies = {id(w): torch.nn.Parameter(_cast_copy(w, dtype, cache), requires_grad=False) for _, w in tied}
    for m, weight in tied:
        m.weight = copies[id(weight)]
    for p in own.values():
        p.data = _cast_copy(p, dtype, cache)
    try:
        yield
    finally:
        for p, data in originals:
            p.data = data
        for m, weight in tied:
            m.weight = weight


def _cast_copy(weight: torch.Tensor, dtype: torch.dtype, cache: dict) -> torch.Tensor:
    """``weight`` in ``dtype``: the cached copy while the weight is the same tensor, unwritten since."""
    stamp = (weight.data_ptr(), weight._version, dtype)
    cached_stamp, copy_ = cache.get(id(weight), (None, None))
    if cached_stamp != stamp:
        copy_ = weight.detach().to(dtype)
        cache[id(weight)] = (stamp, copy_)
    return copy_
