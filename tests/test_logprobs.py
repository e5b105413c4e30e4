"""The blocked log-prob/entropy kernel against the plain formulas of algorithms/core.py: values and gradients."""

from __future__ import annotations

import pytest
import torch

from tunecli.algorithms import core
from tunecli.trainer.logprobs import BLOCK_ROWS, token_logprobs_and_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("sliced", [False, True])  # a view (blocks per row) or contiguous (blocks across rows)
def test_matches_the_plain_formulas_with_gradients(dtype, temperature, sliced):
    torch.manual_seed(0)
    n, length, vocab = 3, BLOCK_ROWS + 5, 500  # rows spill into a second block
    logits = (torch.randn(n, length + 1, vocab) * 3).to(dtype)[:, :-1] if sliced else (torch.randn(n, length, vocab) * 3).to(dtype)
    assert logits.is_contiguous() != sliced
    targets = torch.randint(0, vocab, (n, length))
    w_logp, w_ent = torch.randn(n, length), torch.randn(n, length)  # upstream gradients

    plain = logits.clone().requires_grad_()
    scaled = plain.float() / temperature
    logp, ent = core.token_logprobs(scaled, targets), core.entropy_from_logits(scaled)
    ((logp * w_logp).sum() + (ent * w_ent).sum()).backward()

    blocked = logits.clone().requires_grad_()
    logp2, ent2 = token_logprobs_and_entropy(blocked, targets, temperature=temperature, entropy=True, entropy_grad=True)
    ((logp2 * w_logp).sum() + (ent2 * w_ent).sum()).backward()

    assert logp2.dtype == ent2.dtype == torch.float32
    assert torch.allclose(logp2, logp, atol=1e-5) and torch.allclose(ent2, ent, atol=1e-5)
    assert blocked.grad.dtype == dtype
    # Both gradients are rounded to the logits' dtype at the end.
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(blocked.grad.float(), plain.grad.float(), atol=tol)
    assert not torch.all(plain.grad == 0)


def test_entropy_without_gradient_and_logits_untouched():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 50, requires_grad=True)
    before = logits.detach().clone()
    targets = torch.randint(0, 50, (2, 4))
    logp, ent = token_logprobs_and_entropy(logits, targets, temperature=0.5, entropy=True)
    assert not ent.requires_grad  # a metric: no gradient unless entropy_grad
    logp.sum().backward()
    # d/dx sum_t log p(t) = onehot - p, over 1/temperature
    p = torch.softmax(before / 0.5, dim=-1)
    expected = (torch.nn.functional.one_hot(targets, 50).float() - p) / 0.5
    assert torch.allclose(logits.grad, expected, atol=1e-5)
    assert torch.equal(logits.detach(), before)  # fp32 logits are copied, never modified in place
    none_logp, none_ent = token_logprobs_and_entropy(logits.detach(), targets, temperature=0.5)
    assert none_ent is None and torch.allclose(none_logp, logp.detach())


def test_several_targets_per_position_are_each_scored_and_their_gradients_summed():
    """targets [N, L, K] (a group's prompt predicting each sample's first token): column k is what a
    call with targets[..., k] returns, and the gradient is the sum of those calls' gradients."""
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 40)
    targets = torch.randint(0, 40, (2, 5, 3))
    targets[0, 0, 1] = targets[0, 0, 0]  # the same token drawn by two samples
    weights = torch.randn(2, 5, 3)
    together = logits.clone().requires_grad_()
    logp, ent = token_logprobs_and_entropy(together, targets, temperature=0.7, entropy=True, entropy_grad=True)
    ((logp * weights).sum() + ent.sum()).backward()
    apart = logits.clone().requires_grad_()
    calls = [token_logprobs_and_entropy(apart, targets[..., k], temperature=0.7, entropy=True, entropy_grad=True) for k in range(3)]
    (sum((lp * weights[..., k]).sum() for k, (lp, _) in enumerate(calls)) + calls[0][1].sum()).backward()
    assert logp.shape == (2, 5, 3) and ent.shape == (2, 5)
    assert torch.allclose(logp, torch.stack([lp for lp, _ in calls], dim=-1), atol=1e-6)
    assert torch.allclose(ent, calls[0][1], atol=1e-6)
    assert torch.allclose(together.grad, apart.grad, atol=1e-6)
