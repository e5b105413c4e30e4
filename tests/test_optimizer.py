"""The trainer's AdamW (trainer/schedule.py): fused where torch has the kernel, the same steps as the loop."""

import copy

import pytest
import torch

from tunecli.trainer.schedule import adamw


def _lora_like_params(dtype=torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 576), (576, 16), (16, 1536), (192, 16)]
    return [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(dtype)) for s in shapes]


def _train(optimizer: torch.optim.Optimizer, params, steps: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(p.dtype)
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_cpu_parameters_get_the_fused_kernel_and_the_loops_values():
    fused_params, loop_params = _lora_like_params(), _lora_like_params()
    optimizer = adamw(fused_params, lr=1e-2, weight_decay=0.01)
    assert optimizer.param_groups[0]["fused"] is True
    reference = torch.optim.AdamW(loop_params, lr=1e-2, weight_decay=0.01)
    assert reference.param_groups[0]["fused"] is None  # torch's CPU default: the per-tensor loop
    for got, want in zip(_train(optimizer, fused_params), _train(reference, loop_params), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert not torch.equal(fused_params[0], _lora_like_params()[0])  # it did train


def test_bfloat16_parameters_are_fused_too():
    params = _lora_like_params(torch.bfloat16)
    optimizer = adamw(params, lr=1e-2, weight_decay=0.0)
    assert optimizer.param_groups[0]["fused"] is True
    assert all(torch.isfinite(p.float()).all() for p in _train(optimizer, params, steps=2))


def test_meta_parameters_fall_back_to_the_loop():
    params = [torch.nn.Parameter(torch.empty(4, 4, device="meta"))]
    assert adamw(params, lr=1e-3, weight_decay=0.0).param_groups[0]["fused"] is None


@pytest.mark.parametrize("saved_fused", [True, False])
def test_optimizer_state_moves_between_fused_and_loop(saved_fused):
    """A checkpoint written by the loop (earlier builds) resumes into the fused optimizer, and back."""
    params_a, params_b = _lora_like_params(), _lora_like_params()
    make_fused = lambda p: adamw(p, lr=1e-2, weight_decay=0.01)  # noqa: E731
    make_loop = lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01)  # noqa: E731
    first = (make_fused if saved_fused else make_loop)(params_a)
    _train(first, params_a, steps=3)
    for a, b in zip(params_a, params_b, strict=True):
        b.data.copy_(a.data)
    second = (make_loop if saved_fused else make_fused)(params_b)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # a checkpoint holds copies
    for got, want in zip(_train(second, params_b, steps=2), _train(first, params_a, steps=2), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
