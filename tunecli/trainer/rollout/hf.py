"""The `hf` rollout engine: batched ``generate`` with KV cache on the live policy.

It samples from the training model itself, so ``sync_weights`` has nothing to copy and
``sleep``/``wake_up`` have nothing to free. Prompts are left-padded (generation appends on the right).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from tunecli.trainer import distributed
from tunecli.trainer.rollout.base import Rollout, SamplingSettings


@contextlib.contextmanager
def lora_merged(model: torch.nn.Module) -> Iterator[None]:
    """Fold a peft LoRA adapter into its base weights while generating, and take it out after.

    Unmerged, every linear layer runs three matmuls plus a scale and an add per decode step, and a
    decode step of a small model is bound by the number of ops, not by FLOPs. peft's
    ``merge_adapter``/``unmerge_adapter`` work in place (TRL does the same before its vLLM sync); the
    round trip restores fp32 weights to within rounding (~1e-7 relative), so it is skipped for
    bf16/fp16 base weights, where each round trip would move them by up to half a bf16 step.
    """
    if not (getattr(model, "peft_config", None) and hasattr(model, "merge_adapter")):
        yield
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    # Disabled adapters (the reference) or merged ones: nothing to fold in.
    idle = any(m.disable_adapters or m.merged for m in layers)
    if idle or frozen is None or frozen.dtype != torch.float32:
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


class HFEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, *, max_num_seqs: int = 256):
        self.model = model
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = getattr(model.generation_config, "eos_token_id", None) if hasattr(model, "generation_config") else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.max_num_seqs = max_num_seqs

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> Rollout:
        """n samples per prompt, prompt-major. A ``sampling.seed`` makes the draw independent of global RNG."""
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        per_chunk = max(1, self.max_num_seqs // sampling.n)  # prompts per generate call
        try:
            # FSDP2: gather the full weights once, so ranks that stop at different lengths never wait.
            with distributed.unsharded(self.model), lora_merged(self.model), torch.random.fork_rng(
                devices=[] if self.device.type == "cpu" else [self.device], enabled=sampling.seed is not None
            ):
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                responses: list[list[int]] = []
                for start in range(0, len(prompts), per_chunk):
                    responses += self._generate_chunk(prompts[start : start + per_chunk], sampling)
        finally:
            self.model.train(was_training)
        finished = [bool(r) and r[-1] in self.eos_ids for r in responses]
        expanded = [p for p in prompts for _ in range(sampling.n)]
        return Rollout(prompt_ids=expanded, response_ids=responses, finished=finished)

    def _generate_chunk(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[list[int]]:
        n, width = sampling.n, max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # [B, P]
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, P]
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention_mask[i, width - len(p) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        extra = {}
        if n > 1 and width > 1:
            # Prefill each prompt once (all but its last token) and share the KV cache among its n
            # samples: prompts are most of the tokens in short-answer tasks. generate() then runs
            # the last prompt token and samples on top of the copied cache.
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]
            prefill = self.model(
                input_ids=input_ids[:, :-1],
                attention_mask=attention_mask[:, :-1],
                position_ids=positions[:, :-1],
                use_cache=True,
                logits_to_keep=1,
            )
            cache = prefill.past_key_values
            cache.batch_repeat_interleave(n)  # [B, ...] -> [B*n, ...], prompt-major
            extra["past_key_values"] = cache
        input_ids = input_ids.repeat_interleave(n, dim=0)  # [B*n, P]
        attention_mask = attention_mask.repeat_interleave(n, dim=0)  # [B*n, P]
        greedy = sampling.temperature == 0
        kwargs = dict(do_sample=not greedy, max_new_tokens=sampling.max_new_tokens, use_cache=True)
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k if sampling.top_k > 0 else None)
        else:  # silence the generation_config's sampling defaults
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
            **kwargs,
            **extra,
        )  # [B*n, P + R]
        responses = []
        for row in out[:, width:].tolist():
            # Cut after the first EOS: what follows is padding (SmolLM2's pad id *is* its EOS).
            for j, tok in enumerate(row):
                if tok in self.eos_ids:
                    row = row[: j + 1]
                    break
            responses.append(row)
        return responses

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to copy: generation runs on the live policy."""

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def close(self) -> None:
        self.model = None
