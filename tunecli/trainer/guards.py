"""Stop a run at the first non-finite advantage, loss or gradient norm, before the optimizer steps.

One NaN that reaches ``optimizer.step()`` turns every weight into NaN, and every checkpoint after it
is garbage while the run still "succeeds". The checks are collectives: every rank calls them at the
same point and all of them raise together, so no rank waits forever on one that stopped.
"""

from __future__ import annotations

import torch

from tunecli.errors import TuneError
from tunecli.trainer import distributed

# Where each quantity usually goes wrong, and what to change.
CAUSES = {
    "advantage": (
        "the rewards of a group are too large or too far apart for float32 (a reward near 1e38 overflows "
        "the group statistics)",
        "keep rewards in a modest range (e.g. 0 to 1)",
    ),
    "loss": (
        "the policy diverged (actor.lr too high), or log-probabilities overflowed (extreme "
        "rollout.temperature, actor.compute_dtype=bfloat16, large clip or KL settings)",
        "lower actor.lr, keep actor.grad_clip set, or use actor.compute_dtype=float32",
    ),
    "gradient norm": (
        "the update exploded (actor.lr too high, huge advantages) or a forward pass overflowed",
        "lower actor.lr, keep actor.grad_clip set (e.g. 1.0), or use actor.compute_dtype=float32",
    ),
}


class NonFiniteError(TuneError):
    """A NaN or inf in training: reported with the quantity and the step, before any weight changes."""


def check_finite(step: int, values: dict[str, torch.Tensor | list[torch.Tensor]]) -> None:
    """Raise ``NonFiniteError`` on every rank when any rank holds a NaN or inf in one of ``values``.

    A collective: every rank calls it with the same names, in the same order. ``values`` maps a name
    of ``CAUSES`` to a tensor, or to several (a mini-batch's micro-batch losses).
    """
    flags = torch.tensor([0.0 if _finite(value) else 1.0 for value in values.values()])  # [Q]
    flags = distributed.all_reduce_sum_tensor(flags)  # [Q]  how many ranks saw each quantity go bad
    bad = [name for name, count in zip(values, flags.tolist(), strict=True) if count > 0]
    if bad:
        cause, fix = CAUSES[bad[0]]
        raise NonFiniteError(
            f"Training stopped at step {step}: the {bad[0]} is not a finite number (NaN or inf). The weights "
            f"were not updated and nothing was saved from this step. Likely cause: {cause}. Fix: {fix}, then run "
            "again (it resumes from the last checkpoint)."
        )


def _finite(value: torch.Tensor | list[torch.Tensor]) -> bool:
    tensors = value if isinstance(value, list) else [value]
    return all(bool(torch.isfinite(t.detach()).all()) for t in tensors)
