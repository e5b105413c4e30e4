"""Micro-batch packing and length buckets of the trainer's batching."""

from __future__ import annotations

from tunecli.trainer.batching import length_buckets, pack_by_tokens


def test_pack_by_tokens_respects_the_budget_and_keeps_every_sample():
    lengths = {0: 10, 1: 10, 2: 20, 3: 30, 4: 100}
    batches = pack_by_tokens([0, 1, 2, 3, 4], lengths.__getitem__, budget=60)
    # [0,1,2]: 3 x 20 = 60 fits; adding 3 would be 4 x 30 = 120; 4 alone exceeds the budget.
    assert batches == [[0, 1, 2], [3], [4]]
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]


def test_length_buckets_minimise_padding_plus_pass_cost():
    lengths = [64, 5, 60, 6, 7, 64]
    # One bucket: 6 x 64 = 384 + 32. Two buckets {5,6,7} and {60,64,64}: 3 x 7 + 3 x 64 + 2 x 32 = 277.
    assert length_buckets(lengths, pass_cost=32) == [[1, 3, 4], [2, 0, 5]]
    # A pass dearer than the padding it saves: one bucket, sorted by length.
    assert length_buckets(lengths, pass_cost=1000) == [[1, 3, 4, 2, 0, 5]]
    # Free passes: one bucket per distinct length.
    assert length_buckets([3, 1, 3, 2], pass_cost=0) == [[1], [3], [0, 2]]
    assert length_buckets([], pass_cost=0) == []
