"""The blocked log-prob/entropy kernel (`tunecli/trainer/logprobs.py`) against the plain torch formulas.

    python benchmarks/logprob_kernel.py                     # 536 tokens x 49152 vocab (SmolLM2), fp32
    python benchmarks/logprob_kernel.py --dtype bfloat16 --tokens 1024

Forward + backward of log p(target) and the entropy, as a training pass needs them, timed as the
median of `--repeats` runs after one warm-up. Prints one table: seconds and peak extra memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tunecli.trainer.logprobs import token_logprobs_and_entropy


def plain(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook ops: log-softmax over the whole [N, L, V] tensor in fp32."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)  # [N, L, V]
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N, L]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [N, L]
    return logp, entropy


def blocked(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return token_logprobs_and_entropy(logits, targets, entropy=True, entropy_grad=True)


def time_fwd_bwd(fn, logits: torch.Tensor, targets: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        x = logits.detach().clone().requires_grad_()
        start = time.perf_counter()
        logp, entropy = fn(x, targets)
        (logp.sum() + 0.01 * entropy.sum()).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=536, help="response tokens in the pass")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size (SmolLM2: 49152)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="dtype of the logits")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    logits = torch.randn(1, args.tokens, args.vocab).to(getattr(torch, args.dtype))  # [1, T, V]
    targets = torch.randint(0, args.vocab, (1, args.tokens))  # [1, T]
    print(f"{args.tokens} tokens x {args.vocab} vocab, {args.dtype} logits, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} forward+backward passes")
    print("| kernel | seconds |\n|---|---|")
    for name, fn in (("plain torch ops", plain), ("blocked (trainer/logprobs.py)", blocked)):
        print(f"| {name} | {time_fwd_bwd(fn, logits, targets, args.repeats):.3f} |")


if __name__ == "__main__":
    main()
