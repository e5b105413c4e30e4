"""A toy training loop run under torchrun by tests/test_distributed.py (not a test module itself).

It trains the tiny Llama a few AdamW steps on a fixed global batch with a token-mean NLL loss,
exactly as the trainer must: each rank takes its share of whole groups (``shard_groups``) and
normalises its token sum by the *global* token count, so that FSDP2's gradient averaging gives the
gradient of one process over the whole batch. Rank 0 writes the losses, the updated weights and a
generate() sample to --out.
"""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import torch

from tunecli.trainer import distributed as D


def fake_recipe(strategy: str, checkpointing: bool) -> SimpleNamespace:
    # wrap_policy reads only these fields.
    return SimpleNamespace(
        launch=SimpleNamespace(strategy=strategy),
        model=SimpleNamespace(enable_gradient_checkpointing=checkpointing),
        actor=SimpleNamespace(param_offload=False, optimizer_offload=False, use_torch_compile=False),
    )


def global_batch(vocab: int, n_groups: int = 4, group_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences with different lengths (as in GRPO), so a per-rank mean would be wrong."""
    g = torch.Generator().manual_seed(123)
    seq = torch.randint(5, vocab, (n_groups * group_size, 12), generator=g)  # [B, L]
    lengths = torch.tensor([12, 5, 9, 3, 12, 7, 4, 10])[: n_groups * group_size]
    mask = (torch.arange(12)[None, :] < lengths[:, None]).float()  # [B, L]
    return seq, mask



def full_state_dict(model: torch.nn.Module, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors on every rank (a collective when the model is sharded)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if D.is_sharded(model):
        options = StateDictOptions(full_state_dict=True, cpu_offload=False, ignore_frozen_params=trainable_only)
        sd = get_model_state_dict(model, options=options)
    else:
        sd = model.state_dict()
    if trainable_only:
        # Same keys either way (DCP keeps a tied frozen lm_head that named_parameters() drops).
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        sd = {k: v for k, v in sd.items() if k in names}
    return {k: v.detach() for k, v in sd.items()}

def train_variant(model_dir: str, info: D.DistInfo, *, lora: bool, checkpointing: bool, steps: int) -> tuple[dict, dict]:
    """Train one model variant; returns (results, full trained weights) on every rank."""
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model = D.wrap_policy(model, fake_recipe("fsdp2", checkpointing))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-2)

    seq, mask = global_batch(model.config.vocab_size)
    global_tokens = mask[:, 1:].sum().item()
    rows = D.shard_groups(list(range(seq.shape[0])), group_size=2)
    seq, mask = seq[rows].to(info.device), mask[rows].to(info.device)  # [B_rank, L]

    # Generation on a sharded model, first thing (as the trainer's rollout): ranks stop at different
    # lengths, so without unsharded() this hangs; before any forward, FSDP's lazy init must still work.
    prompt = torch.tensor([[5, 6, 7 + D.rank()]], device=info.device)
    with D.unsharded(model) as m:
        gen_before = m.generate(input_ids=prompt, max_new_tokens=4 + 3 * D.rank(), do_sample=False)

    losses = []
    for _ in range(steps):
        logits = model(input_ids=seq, attention_mask=mask).logits[:, :-1]  # [B_rank, L-1, V]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), seq[:, 1:], reduction="none")  # [B_rank, L-1]
        token_sum = (nll * mask[:, 1:]).sum()
        # FSDP2 averages gradients over ranks: scale by world size so the result is sum / global count.
        loss = token_sum / global_tokens * D.world_size()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad()
        losses.append(D.all_reduce_sum(token_sum.item()) / global_tokens)

    with D.unsharded(model) as m:
        gen = m.generate(input_ids=prompt, max_new_tokens=4 + 3 * D.rank(), do_sample=False)
    # After generate, training must still work (params resharded, hooks intact).
    model(input_ids=seq, attention_mask=mask).logits.sum().backward()

    state = full_state_dict(model, trainable_only=lora)
    results = {"losses": losses, "gen": gen_before.tolist() + gen.tolist(), "sharded": D.is_sharded(model)}
    return results, {k: v.detach().cpu().clone() for k, v in state.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="results JSON; weights go to OUT.<variant>.pt")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()

    info = D.init()
    out = {"world": D.world_size(), "backend": info.backend,
           "metrics": D.all_reduce_mean({"rank": float(D.rank()), "one": 1.0})}
    for name, lora, ckpt in (("full", False, False), ("lora+ckpt", True, True)):
        results, weights = train_variant(args.model, info, lora=lora, checkpointing=ckpt, steps=args.steps)
        out[name] = results
        if D.is_main():
            torch.save(weights, f"{args.out}.{name}.pt")
    if D.is_main():
        with open(args.out, "w") as f:
            json.dump(out, f)
    D.barrier()
    D.shutdown()


if __name__ == "__main__":
    from tunecli.train import exit_worker

    main()
    exit_worker(0)  # as the trainer's workers leave: no interpreter teardown under gloo
