"""The policy's weights as a stream of (name, tensor): what a rollout engine holding its own copy of
the model loads after every update (vLLM, or the hf engine in another dtype).

The only module that knows about peft and FSDP2 gathering. An engine names the format it wants
(``WeightFormat``) and receives a ``WeightStream``:
  * ``full``: every base-model weight, in the base model's names; a LoRA policy streams ``W + scale
    * B @ A`` computed on copies, so the trained (possibly FSDP2-sharded) parameters are never touched;
  * ``changed``: only what training changes (LoRA: the merged layers and trainable tensors such as
    ``modules_to_save``; full fine-tuning: everything), for an engine still holding the rest;
  * ``adapter``: the LoRA adapter's own tensors and config (vLLM's ``LoRARequest`` mode).

An FSDP2 shard is gathered one tensor at a time (``full_tensor()``, a collective): every rank must
consume the stream, whole and in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

WeightFormat = Literal["full", "changed", "adapter"]

_PEFT_PREFIX = "base_model.model."
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


@dataclass
class WeightStream:
    """(name, tensor) pairs for an engine, one gathered tensor at a time."""

    tensors: Iterator[tuple[str, torch.Tensor]]
    partial: bool  # some weights left out: the engine keeps what it holds for them
    adapter_config: dict[str, Any] | None = None  # format ``adapter``: peft's adapter_config.json

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.tensors


def weight_stream(model: torch.nn.Module, weight_format: WeightFormat) -> WeightStream:
    """``model``'s weights in ``weight_format`` (call on every rank: FSDP2 gathers)."""
    peft = _is_peft(model)
    if weight_format == "adapter":
        if not peft:
            raise ValueError("weight format 'adapter' needs a LoRA policy (model.method lora)")
        return WeightStream(_adapter_items(model), partial=True, adapter_config=_adapter_config(model))
    if not peft:  # full fine-tuning changes every weight
        return WeightStream(_full_state_items(model), partial=False)
    changed_only = weight_format == "changed"
    return WeightStream(_merged_state_items(model, changed_only=changed_only), partial=changed_only)


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every rank must call it), else itself."""
    full_tensor = getattr(t, "full_tensor", None)  # torch.distributed.tensor.DTensor
    return full_tensor() if full_tensor is not None else t


def _clean_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Modules carrying the active LoRA adapter, by their (cleaned) peft name."""
    adapter = model.active_adapter
    layers = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a:
            if getattr(module, "use_dora", {}).get(adapter, False):
                raise NotImplementedError("merging a DoRA adapter into the base weights is not supported (rollout.lora_sync=merge, or the hf engine in another dtype)")
            layers[_clean_name(name)] = module
    return layers


def _full_state_items(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(vLLM-style name, full tensor) of a transformers model, streamed: one gathered tensor at a time."""
    for name, tensor in model.state_dict().items():
        yield _clean_name(name), _full(tensor).detach()


def _merged_state_items(model: torch.nn.Module, *, changed_only: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Base-model weights of a peft model with its adapter merged in, computed on copies.

    Mirrors TRL's PEFT sync: drop ``base_model.model.``, drop ``.base_layer``, skip ``lora_`` keys and
    the frozen ``original_module`` copies of ``modules_to_save``. Merging on copies (instead of peft's
    in-place ``merge_adapter``) leaves the trained, possibly sharded, parameters untouched.

    ``changed_only``: the frozen rest (embeddings, norms: a third of SmolLM2's elements) is what an
    engine loaded from ``model.path`` already holds.
    """
    adapter = model.active_adapter
    layers = _lora_layers(model)
    trainable = {_clean_name(n) for n, p in model.named_parameters() if p.requires_grad}
    for raw_name, tensor in model.state_dict().items():
        name = _clean_name(raw_name)
        if ".lora_" in name or ".original_module." in name:
            if ".lora_" in name:
                _full(tensor)  # FSDP2: every rank joins every gather, in state-dict order
            continue
        module = layers.get(name.removesuffix(".base_layer.weight")) if name.endswith(".base_layer.weight") else None
        if changed_only and module is None and name not in trainable:
            continue  # the same decision on every rank: by name only
        tensor = _full(tensor).detach()
        if module is not None:
            a = _full(module.lora_A[adapter].weight).detach().float()  # [r, in]
            b = _full(module.lora_B[adapter].weight).detach().float()  # [out, r]
            if getattr(module, "fan_in_fan_out", False):
                merged = torch.addmm(tensor.float(), a.T, b.T, alpha=module.scaling[adapter])  # [in, out]
            else:
                merged = torch.addmm(tensor.float(), b, a, alpha=module.scaling[adapter])  # W + s * B @ A, [out, in]
            tensor = merged.to(tensor.dtype)
        name = name.removeprefix(_PEFT_PREFIX).replace(".base_layer", "")
        name = name.replace(f".modules_to_save.{adapter}", "")
        yield name, tensor


def _adapter_items(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The active adapter's tensors, named as peft saves them (what vLLM's LoRA loader reads)."""
    adapter = model.active_adapter
    for name, module in _lora_layers(model).items():
        yield f"{name}.lora_A.weight", _full(module.lora_A[adapter].weight).detach().contiguous().cpu()
        yield f"{name}.lora_B.weight", _full(module.lora_B[adapter].weight).detach().contiguous().cpu()


def _adapter_config(model: torch.nn.Module) -> dict[str, Any]:
    """peft's config of the active adapter as JSON-ready values (sets as sorted lists)."""
    config = model.peft_config[model.active_adapter].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
