"""Forward passes that score responses: per-token log-probs (and entropies) of a micro-batch under a model.

Three ways to the same values (up to float rounding; tests/test_train_e2e.py), one interface
(``ForwardPass``); ``choose_pass`` picks one for a model and recipe:

  FullSequencePass   [prompt | response] rows, one pass per length bucket: the straightforward way
  SharedPromptPass   each group's prompt once, then its responses on the prompt's KV cache
  GroupRowsPass      one row per group: its prompt once, its responses side by side (a 4D mask)

The samples of a GRPO group share their prompt, most of the tokens in short-answer tasks (~46 of
~58 for the quickstart): the last two run it once per group. All end in the blocked kernel of
``logprobs.py``, on the distribution that was sampled (logits / temperature, as verl does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import torch

from tunecli.trainer.batching import collate, group_members, group_row_length, group_rows, left_pad, length_buckets, right_pad
from tunecli.trainer.logprobs import token_logprobs_and_entropy
from tunecli.trainer.policy import EAGER_MAX_TOKENS
from tunecli.trainer.rollout.base import Rollout


@dataclass(frozen=True)
class PassSettings:
    device: torch.device
    pad_id: int
    temperature: float  # log-probs of logits / temperature: the distribution that was sampled
    bf16: bool  # matmuls under bf16 autocast (actor.compute_dtype); weights keep their dtype

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


@dataclass
class TokenScores:
    """Per response token of each sample asked for, in the order asked for."""

    logp: torch.Tensor  # [m, R] fp32
    entropy: torch.Tensor | None  # [m, R] fp32, when asked for
    mask: torch.Tensor  # [m, R] 1.0 on response tokens, 0.0 past each end


class ForwardPass(Protocol):
    settings: PassSettings

    def __call__(self, model, rollout: Rollout, indices: list[int], *, entropy: bool, entropy_grad: bool = False) -> TokenScores:
        """Scores of the responses of samples ``indices``; the entropy carries a gradient with ``entropy_grad``."""

    def micro_batch_order(self, rollout: Rollout, indices: list[int]) -> list[int]:
        """``indices`` in the order micro-batches are cut from: what this pass runs fastest together."""


def choose_pass(model, settings: PassSettings, *, gradient_checkpointing: bool) -> ForwardPass:
    """The pass for ``model`` (the policy; its reference has the same attention) and the recipe."""
    # Gradient checkpointing turns the KV cache off in training passes: the plain pass, one per
    # length bucket (group rows fall back on the KV path, so they go with it).
    if gradient_checkpointing:
        return FullSequencePass(settings)
    shared_prompts = SharedPromptPass(settings)
    # Group rows need a 4D mask to be all the attention needs: eager or sdpa kernels, no sliding
    # window (a flash-attention kernel takes no such mask; a window is part of the mask a model builds).
    if not takes_custom_masks(model):
        return shared_prompts
    # Eager attention keeps a [heads, L, L] score matrix per layer: longer rows take the KV path.
    longest = EAGER_MAX_TOKENS if model.config._attn_implementation == "eager" else None
    return GroupRowsPass(settings, max_row_tokens=longest, long_rows=shared_prompts)


def takes_custom_masks(model) -> bool:
    """Whether a 4D attention mask is all the model's attention needs (``GroupRowsPass``):
    eager or sdpa kernels, and no sliding-window layers (their window is part of the mask they build)."""
    config = model.config
    if getattr(config, "_attn_implementation", None) not in ("eager", "sdpa"):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return getattr(config, "sliding_window", None) is None


def by_length(rollout: Rollout, indices: list[int]) -> list[int]:
    """Similar [prompt | response] lengths together: less padding in each pass."""
    return sorted(indices, key=lambda i: (len(rollout.prompt_ids[i]) + len(rollout.response_ids[i]), i))


def by_group(rollout: Rollout, indices: list[int]) -> list[int]:
    """Groups together (they share one prompt pass), then similar response lengths."""
    return sorted(indices, key=lambda i: (rollout.group_of(i), len(rollout.response_ids[i]), i))


# ---------------------------------------------------------------------------------------------
# Passes that produce logits per chunk of rows (``logit_chunks``), then score them
# ---------------------------------------------------------------------------------------------
@dataclass
class LogitChunk:
    """Logits of some rows of a micro-batch, from one forward pass."""

    rows: list[int]  # positions in the micro-batch
    logits: torch.Tensor  # [b, R_b, V]  position t predicts response token t
    targets: torch.Tensor  # [b, R_b]  the response tokens (padding past each end)


def _score_chunks(settings: PassSettings, chunks: list[LogitChunk], rollout: Rollout, indices: list[int],
                  entropy: bool, entropy_grad: bool) -> TokenScores:
    parts = []
    for chunk in chunks:
        # In fp32 blocks: bf16 logits are fine, bf16 log-probs are not.
        logp, ent = token_logprobs_and_entropy(
            chunk.logits, chunk.targets, temperature=settings.temperature, entropy=entropy, entropy_grad=entropy_grad
        )  # [b, R_b], [b, R_b] | None
        parts.append((chunk.rows, logp, ent))
    return _in_order(settings, rollout, indices, parts, entropy)


class _LogitChunkPass(ABC):
    """A pass that produces logits in chunks (``logit_chunks``) and scores them with the blocked kernel."""

    def __init__(self, settings: PassSettings):
        self.settings = settings

    def __call__(self, model, rollout: Rollout, indices: list[int], *, entropy: bool, entropy_grad: bool = False) -> TokenScores:
        with self.settings.autocast():
            chunks = self.logit_chunks(model, rollout, indices)
        return _score_chunks(self.settings, chunks, rollout, indices, entropy, entropy_grad)

    @abstractmethod
    def logit_chunks(self, model, rollout: Rollout, indices: list[int]) -> list[LogitChunk]:
        """Logits of the responses of ``indices``, one chunk per forward pass."""


class FullSequencePass(_LogitChunkPass):
    """One pass per length bucket over [prompt | response] rows: the straightforward way."""

    micro_batch_order = staticmethod(by_length)

    def logit_chunks(self, model, rollout: Rollout, indices: list[int]) -> list[LogitChunk]:
        device = self.settings.device
        totals = [len(rollout.prompt_ids[i]) + len(rollout.response_ids[i]) for i in indices]
        chunks = []
        for bucket in length_buckets(totals):
            sel = [indices[k] for k in bucket]
            input_ids, attention_mask, position_ids, mask = collate(
                [rollout.prompt_ids[i] for i in sel], [rollout.response_ids[i] for i in sel], self.settings.pad_id
            )  # [b, P+R], [b, P+R], [b, P+R], [b, R]
            width = mask.shape[1]
            out = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device),
                logits_to_keep=width + 1,  # only the response positions go through the LM head
                use_cache=False,
            )
            logits = out.logits[:, :-1, :]  # [b, R, V]  position t predicts response token t
            chunks.append(LogitChunk(bucket, logits, input_ids[:, -width:].to(device)))
        return chunks


class SharedPromptPass(_LogitChunkPass):
    """Each group's prompt once, then the responses on its KV cache, in length buckets.

    Gradients flow into the shared prompt pass through the cache (index_select is differentiable).
    The responses run in length buckets, so a short answer is not padded to the longest one.
    """

    micro_batch_order = staticmethod(by_group)

    def logit_chunks(self, model, rollout: Rollout, indices: list[int]) -> list[LogitChunk]:
        from transformers import DynamicCache

        device, pad_id = self.settings.device, self.settings.pad_id
        group_of = [rollout.group_of(i) for i in indices]
        groups = sorted(set(group_of))
        row = {g: r for r, g in enumerate(groups)}
        prompt_ids, prompt_mask = left_pad([rollout.prompt_ids[g * rollout.group_size] for g in groups], pad_id)  # [G, P]
        prompt_mask = prompt_mask.to(device)
        prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # [G, P]
        out = model(
            input_ids=prompt_ids.to(device),
            attention_mask=prompt_mask,
            position_ids=prompt_pos,
            use_cache=True,
            logits_to_keep=1,  # the prompt's last position predicts the first response token
        )
        first_logits = out.logits[:, -1:, :]  # [G, 1, V]
        plain = _plain_kv_cache(out.past_key_values)
        prompt_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers] if plain else None  # [G, heads, P, d]
        prompt_len = prompt_mask.sum(-1)  # [G]
        lengths = [len(rollout.response_ids[i]) for i in indices]
        buckets = length_buckets(lengths) if plain else [list(range(len(indices)))]
        chunks = []
        for bucket in buckets:
            select = torch.tensor([row[group_of[k]] for k in bucket], device=device)  # [b]
            resp_ids, mask = right_pad([rollout.response_ids[indices[k]] for k in bucket], pad_id)  # [b, R]
            resp_ids, mask = resp_ids.to(device), mask.to(device)
            first = first_logits.index_select(0, select)  # [b, 1, V]
            if resp_ids.shape[1] == 1:
                chunks.append(LogitChunk(bucket, first, resp_ids))
                continue
            # Response tokens 0..R-2 predict tokens 1..R-1, attending to the cached prompt.
            if plain:  # each bucket its own copy of its groups' prompt cache
                cache = DynamicCache(ddp_cache_data=[(k.index_select(0, select), v.index_select(0, select)) for k, v in prompt_kv])
            else:  # one bucket: the cache itself, expanded to the rows
                cache = out.past_key_values
                cache.reorder_cache(select)
            attention = torch.cat([prompt_mask.index_select(0, select), mask[:, :-1].long()], dim=1)  # [b, P+R-1]
            positions = prompt_len.index_select(0, select).unsqueeze(1) + torch.arange(resp_ids.shape[1] - 1, device=device)  # [b, R-1]
            rest = model(
                input_ids=resp_ids[:, :-1],
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).logits  # [b, R-1, V]
            chunks.append(LogitChunk(bucket, torch.cat([first, rest], dim=1), resp_ids))  # [b, R, V]
        return chunks


def _plain_kv_cache(cache) -> bool:
    """Only full-attention layers can be copied per bucket (sliding-window or recurrent ones cannot)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


# ---------------------------------------------------------------------------------------------
# One row per group
# ---------------------------------------------------------------------------------------------
class GroupRowsPass:
    """A row per group: its prompt once, then its responses side by side (``batching.GroupRows``).

    A 4D attention mask keeps the responses apart. Rows of similar length run together
    (``length_buckets``): usually one pass for the whole micro-batch instead of a prompt pass plus
    one per length bucket of responses, with more rows per matmul. Micro-batches with a row longer
    than ``max_row_tokens`` go to ``long_rows`` instead.
    """

    micro_batch_order = staticmethod(by_group)

    def __init__(self, settings: PassSettings, *, max_row_tokens: int | None, long_rows: ForwardPass):
        self.settings = settings
        self.max_row_tokens = max_row_tokens
        self.long_rows = long_rows

    def __call__(self, model, rollout: Rollout, indices: list[int], *, entropy: bool, entropy_grad: bool = False) -> TokenScores:
        groups = group_members([rollout.group_of(i) for i in indices])
        prompts = [rollout.prompt_ids[i] for i in indices]
        responses = [rollout.response_ids[i] for i in indices]
        row_lengths = [group_row_length(prompts, responses, ks) for ks in groups]
        if self.max_row_tokens is not None and max(row_lengths) > self.max_row_tokens:
            return self.long_rows(model, rollout, indices, entropy=entropy, entropy_grad=entropy_grad)
        parts = []
        for bucket in length_buckets(row_lengths):
            positions = [k for g in bucket for k in groups[g]]
            logp, ent = self._rows_pass(model, rollout, [indices[k] for k in positions], entropy, entropy_grad)
            parts.append((positions, logp, ent))
        return _in_order(self.settings, rollout, indices, parts, entropy)

    def _rows_pass(self, model, rollout: Rollout, indices: list[int], entropy: bool, entropy_grad: bool):
        """One forward pass over ``GroupRows``: per-token log-probs (and entropies) [m, R] in ``indices`` order."""
        device, temperature = self.settings.device, self.settings.temperature
        rows = group_rows(
            [rollout.prompt_ids[i] for i in indices], [rollout.response_ids[i] for i in indices],
            [rollout.group_of(i) for i in indices], self.settings.pad_id,
        )
        allowed = rows.allowed.unsqueeze(1).to(device)  # [G, 1, L, L]
        if model.config._attn_implementation == "eager":  # eager adds the mask to the scores
            attention = torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)
        else:  # sdpa takes it as it is
            attention = allowed
        length = rows.input_ids.shape[1]
        width = length - rows.prompt_width  # response input columns
        # The last prompt column and every response column go through the LM head. As indices, not
        # a count: the model then gathers a contiguous copy of those hidden states; a sliced view
        # made matmul expand the LM head's weight into a [1, H, V] copy per call (33 ms each).
        keep = torch.arange(length - width - 1, length, device=device)
        with self.settings.autocast():
            logits = model(
                input_ids=rows.input_ids.to(device),
                attention_mask=attention,
                position_ids=rows.position_ids.to(device),
                logits_to_keep=keep,
                use_cache=False,
            ).logits  # [G, 1 + width, V]
        # One kernel call over all the logits, so their gradient is written once: column 0 (the
        # prompt's last position) is scored for each sample's first token, the others for one token.
        per_row = rows.first_targets.shape[1]
        targets = torch.zeros(logits.shape[0], logits.shape[1], per_row, dtype=torch.long)  # [G, 1 + width, S]
        targets[:, 0, :], targets[:, 1:, 0] = rows.first_targets, rows.next_targets
        logp, ent = token_logprobs_and_entropy(
            logits, targets.to(device), temperature=temperature, entropy=entropy, entropy_grad=entropy_grad
        )  # [G, 1 + width, S], [G, 1 + width]
        scores = rows.gather(logp[:, 0, :], logp[:, 1:, 0])  # [m, R]
        return scores, rows.gather(ent[:, :1].expand(-1, per_row), ent[:, 1:]) if entropy else None


# ---------------------------------------------------------------------------------------------
# Back into the order asked for
# ---------------------------------------------------------------------------------------------
def _in_order(settings: PassSettings, rollout: Rollout, indices: list[int], parts, entropy: bool) -> TokenScores:
    """(positions in ``indices``, log-probs [b, R_b], entropies | None) per pass -> scores in ``indices`` order."""
    _, mask = right_pad([rollout.response_ids[i] for i in indices], settings.pad_id)  # [m, R]
    mask = mask.to(settings.device)
    rows = [k for positions, _, _ in parts for k in positions]
    order = torch.tensor(rows).argsort().to(settings.device)  # pass order -> the order of ``indices``
    logp = _stack_padded([p[1] for p in parts], mask.shape[1]).index_select(0, order)  # [m, R]
    ent = _stack_padded([p[2] for p in parts], mask.shape[1]).index_select(0, order) if entropy else None  # [m, R]
    return TokenScores(logp, ent, mask)


def _stack_padded(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """[b_k, R_k] parts -> [sum b_k, width], zeros past each part's width."""
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts], dim=0)
