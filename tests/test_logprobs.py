"""The blocked log-prob/entropy kernel against the plain formulas of algorithms/core.py: values and gradients."""

from __future__ import annotations

import pytest
import torch

from tunecli.algorithms import core
from tunecli.trainer.logprobs import BLOCK_ROWS, token_logprobs_and_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_the_plain_formulas_with_gradients(dtype, temperature):
    torch.manual_seed(0)
    n, length, vocab = 3, BLOCK_ROWS + 5, 500  # rows spill into a second block
    logits = (torch.randn(n, length, vocab) * 3).to(dtype)
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
