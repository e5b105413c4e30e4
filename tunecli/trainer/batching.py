"""How a step's samples become tensors: micro-batches, length buckets, padding.

Pure functions of token-id lists; the trainer decides which to use. Padding is the waste to cut:
a response pass over rows padded to the longest response computes every padded position (at 64 new
tokens about half of them were padding), so rows of similar length run together.
"""

from __future__ import annotations

import torch

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


def pad_rows(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Per-sample 1-D tensors -> [m, R] shaped, typed and placed like ``like`` (zeros past each end)."""
    out = torch.zeros_like(like)  # [m, R]
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.to(out.device, out.dtype)
    return out
