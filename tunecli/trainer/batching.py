"""How a step's samples become tensors: micro-batches, length buckets, padding.

Pure functions of token-id lists; the trainer decides which to use. Padding is the waste to cut:
a response pass over rows padded to the longest response computes every padded position (at 64 new
tokens about half of them were padding), so rows of similar length run together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunecli.algorithms.core import normalizer_count

# What one more forward/backward pass costs beyond its tokens, in padded token positions: the
# per-pass overhead (Python, kernel launches, smaller matmuls). Measured on the 2-core CPU, the update
# of three fixed compare_trl.py batches (16 x up to 64 tokens), seconds summed over two repeats:
#   pass cost   0 (a pass per length): fp32 17.7 / 19.5   bf16 13.5 / 11.3
#   pass cost  16, 32, 96:             fp32 13.9 - 14.5   bf16 7.0 - 8.3 (32: 8.3 / 8.3)
#   pass cost 1000 (one pass):         fp32 20.2 / 20.6   bf16 9.5 / 9.6
PASS_COST_TOKENS = 32


def pack_by_tokens(ordered: list[int], length, budget: int) -> list[list[int]]:
    """verl's dynamic batch size: consecutive samples share a micro-batch while its padded size
    (samples x longest) stays within ``budget`` tokens; a sample longer than the budget goes alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in ordered:
        n = length(i)
        if current and max(longest, n) * (len(current) + 1) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def mini_batch_chunks(batch: int, mini: int, world: int) -> int:
    """How many chunks ``distributed.shard_groups`` cuts a step's prompts into. When every rank can get
    whole prompts of every mini-batch, one chunk per mini-batch: the ranks' mini-batches together are
    exactly one process's, so N ranks take the same optimizer steps as one. Otherwise (verl's sample
    split: ppo_mini_batch_size x rollout.n divisible by the processes) one chunk."""
    return batch // mini if batch % mini == 0 and mini % world == 0 else 1


def minibatch_indices(num_samples: int, per_mini: int) -> list[list[int]]:
    """This rank's samples of each mini-batch: ``per_mini`` consecutive samples (ppo_mini_batch_size x
    rollout.n / processes, as verl splits them), the last mini-batch shorter when they do not divide.
    Advantages are computed before, over whole groups, so a group may span two mini-batches."""
    return [list(range(start, min(start + per_mini, num_samples))) for start in range(0, num_samples, per_mini)]


@dataclass(frozen=True)
class MiniBatch:
    """One optimizer step's share of this rank: the samples that go through the passes, and the counts
    the loss and its statistics divide by (over all ranks)."""

    run: list[int]
    normalizer: float  # tokens or sequences of the samples the loss counts (``algorithm.filter_groups``)
    ran: float  # the same count over the samples run: the denominator of the reported entropy and KL


def samples_to_run(mini_batch: list[int], trained: torch.Tensor, world_size: int) -> list[int]:
    """The samples of ``mini_batch`` that go through the forward and backward passes.

    One process runs only the samples that carry a gradient (``trained``): in a GRPO step most groups
    are often tied (advantage 0), and their passes would add exactly nothing. Several ranks run them
    all, masked, so that every rank runs the same number of passes (FSDP needs that)."""
    return [i for i in mini_batch if trained[i]] if world_size == 1 else list(mini_batch)


def plan_mini_batch(responses: list[list[int]], mini_batch: list[int], counted: torch.Tensor, trained: torch.Tensor,
                    loss_agg_mode: str, world_size: int, all_reduce) -> MiniBatch | None:
    """This rank's samples to run and the global counts of one mini-batch; None when no sample on any
    rank carries a gradient. ``counted``: the samples the loss counts (filter_groups leaves tied groups
    out); ``trained``: those that carry a gradient; ``all_reduce`` sums a tensor over ranks."""
    run = samples_to_run(mini_batch, trained, world_size)

    def count(samples: list[int]) -> float:
        if not samples:
            return 0.0
        return normalizer_count(response_mask([responses[i] for i in samples], [bool(counted[i]) for i in samples]), loss_agg_mode)

    counted_here = count(mini_batch)
    ran_here = count(run) if len(run) < len(mini_batch) else counted_here  # several ranks run every sample
    local = torch.tensor([counted_here, ran_here, float(trained[mini_batch].sum())])  # [3]
    normalizer, ran, training = all_reduce(local).tolist()  # one collective
    return MiniBatch(run, normalizer, ran) if training > 0 and normalizer > 0 else None


def micro_batches(ordered: list[int], rollout, actor) -> list[list[int]]:
    """Split ``ordered`` samples into micro-batches: a fixed count, or a token budget when one is set."""
    if actor.ppo_max_token_len_per_gpu is None:
        size = actor.ppo_micro_batch_size_per_gpu
        return [ordered[s : s + size] for s in range(0, len(ordered), size)]
    budget = actor.ppo_max_token_len_per_gpu
    return pack_by_tokens(ordered, lambda i: len(rollout.prompt_ids[i]) + len(rollout.response_ids[i]), budget)


def length_buckets(lengths: list[int], pass_cost: int | None = None) -> list[list[int]]:
    """Split rows into buckets of similar length so that padded positions plus per-pass costs are fewest.

    Returns lists of row positions (into ``lengths``), shortest bucket first, each sorted by length.
    Cost of a bucket = rows x its longest row + ``pass_cost``; an exact dynamic programme over the
    rows sorted by length (a bucket is always a contiguous run of that order). ``pass_cost`` defaults
    to ``PASS_COST_TOKENS``.
    """
    pass_cost = PASS_COST_TOKENS if pass_cost is None else pass_cost
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    if n == 0:
        return []
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):  # the last bucket holds sorted rows i..j-1
            cost = best[i] + (j - i) * longest + pass_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets = []
    j = n
    while j > 0:
        buckets.append(order[cut[j] : j])
        j = cut[j]
    return buckets[::-1]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [m, P] and attention mask [m, P]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [m, P]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [m, P]
    for k, r in enumerate(rows):
        ids[k, width - len(r) :] = torch.tensor(r)
        mask[k, width - len(r) :] = 1
    return ids, mask


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [m, R] and float mask [m, R]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [m, R]
    mask = torch.zeros((len(rows), width))  # [m, R]
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(r)
        mask[k, : len(r)] = 1.0
    return ids, mask


def collate(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """[left-padded prompt | right-padded response] rows.

    Returns input_ids [m, P+R], attention_mask [m, P+R], position_ids [m, P+R], response mask [m, R].
    """
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)  # [m, P]
    resp_ids, mask = right_pad(responses, pad_id)  # [m, R]
    input_ids = torch.cat([prompt_ids, resp_ids], dim=1)  # [m, P+R]
    attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)  # [m, P+R]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [m, P+R]  positions as during generation
    return input_ids, attention_mask, position_ids, mask


def response_mask(responses: list[list[int]], keep: list[bool]) -> torch.Tensor:
    """[m, R] float: 1.0 on the tokens of the responses kept, 0.0 on the others and past each end."""
    width = max((len(r) for r in responses), default=0)
    mask = torch.zeros(len(responses), width)  # [m, R]
    for row, (response, kept) in enumerate(zip(responses, keep, strict=True)):
        if kept:
            mask[row, : len(response)] = 1.0
    return mask


def pad_rows(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Per-sample 1-D tensors -> [m, R] shaped, typed and placed like ``like`` (zeros past each end)."""
    out = torch.zeros_like(like)  # [m, R]
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.to(out.device, out.dtype)
    return out


@dataclass
class GroupRows:
    """A micro-batch as one row per GRPO group: the group's prompt once (left-padded to end at column
    P - 1), then the inputs of its responses side by side. ``allowed`` keeps them apart: a response
    token sees its prompt and its own earlier tokens, nothing of its siblings. One forward pass over
    these rows gives every log-prob of the micro-batch: the last prompt column predicts each
    response's first token, column P + j the token after the response token placed there.
    """

    input_ids: torch.Tensor  # [G, L]
    position_ids: torch.Tensor  # [G, L]  as during generation: each response continues its prompt
    allowed: torch.Tensor  # [G, L, L] bool: query column may attend to key column
    prompt_width: int  # P
    first_targets: torch.Tensor  # [G, S]  first response token of each of the row's S samples (pad: 0)
    next_targets: torch.Tensor  # [G, L - P]  the token column P + j predicts (pad: 0)
    gather_index: torch.Tensor  # [m, R]  into cat(first.flatten(), next.flatten(), [0]): sample order

    def gather(self, first: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
        """Per-token values [G, S] and [G, L - P] -> [m, R] in sample order, 0 past each response."""
        flat = torch.cat([first.flatten(), following.flatten(), first.new_zeros(1)])
        return flat[self.gather_index.to(flat.device)]


def group_members(groups: list[int]) -> list[list[int]]:
    """Positions sharing a ``groups`` value, in order of first appearance: one list per group row."""
    members: dict[int, list[int]] = {}
    for k, g in enumerate(groups):
        members.setdefault(g, []).append(k)
    return list(members.values())


def group_row_length(prompts: list[list[int]], responses: list[list[int]], members: list[int]) -> int:
    """Tokens of one group's row: its prompt, then every response but its last token."""
    return len(prompts[members[0]]) + sum(max(len(responses[k]) - 1, 0) for k in members)


def group_rows(prompts: list[list[int]], responses: list[list[int]], groups: list[int], pad_id: int) -> GroupRows:
    """Lay samples out as ``GroupRows``; samples with the same ``groups`` value share a prompt."""
    rows = group_members(groups)
    width = max(len(prompts[ks[0]]) for ks in rows)  # P
    length = width + max(group_row_length(prompts, responses, ks) - len(prompts[ks[0]]) for ks in rows)  # L
    per_row = max(len(ks) for ks in rows)  # S
    n_rows, n_samples = len(rows), len(prompts)
    ids = torch.full((n_rows, length), pad_id, dtype=torch.long)
    positions = torch.zeros((n_rows, length), dtype=torch.long)
    allowed = torch.zeros((n_rows, length, length), dtype=torch.bool)
    first_targets = torch.zeros((n_rows, per_row), dtype=torch.long)
    next_targets = torch.zeros((n_rows, length - width), dtype=torch.long)
    longest = max((len(r) for r in responses), default=0)
    zero_slot = n_rows * per_row + n_rows * (length - width)
    index = torch.full((n_samples, max(longest, 1)), zero_slot, dtype=torch.long)
    for r, ks in enumerate(rows):
        prompt = prompts[ks[0]]
        p = len(prompt)
        start = width - p
        ids[r, start:width] = torch.tensor(prompt)
        positions[r, start:width] = torch.arange(p)
        allowed[r, start:width, start:width] = torch.ones(p, p, dtype=torch.bool).tril()
        column = width
        for s, k in enumerate(ks):
            resp = responses[k]
            if not resp:
                continue
            n_in = len(resp) - 1  # the last token predicts nothing
            end = column + n_in
            ids[r, column:end] = torch.tensor(resp[:-1])
            positions[r, column:end] = torch.arange(p, p + n_in)
            allowed[r, column:end, start:width] = True
            allowed[r, column:end, column:end] = torch.ones(n_in, n_in, dtype=torch.bool).tril()
            first_targets[r, s] = resp[0]
            next_targets[r, column - width : end - width] = torch.tensor(resp[1:])
            index[k, 0] = r * per_row + s
            base = n_rows * per_row + r * (length - width) + (column - width)
            index[k, 1 : len(resp)] = torch.arange(base, base + n_in)
            column = end
        # Padding columns attend to themselves only (their outputs are never read).
        unused = ~allowed[r].any(dim=-1)
        allowed[r, unused, unused] = True
    return GroupRows(ids, positions, allowed, width, first_targets, next_targets, index)
