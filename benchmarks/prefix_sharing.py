"""Does a GRPO group share its prompt's KV cache in vLLM on the CPU? Bare ``vllm.LLM.generate`` per KV block size.

    python benchmarks/prefix_sharing.py                       # the quickstart: 4 prompts x 8 samples, 12 new tokens
    python benchmarks/prefix_sharing.py --max-new-tokens 64   # longer answers
    python benchmarks/prefix_sharing.py --blocks 128 32 --no-seed

vLLM's prefix cache shares whole KV blocks only. Its CPU default block is 128 tokens, so prompts
shorter than that are prefilled once per sample; the CPU attention backend takes multiples of 32.
Each block size runs in its own process (vLLM keeps global state) on the same prompts: the
quickstart's arithmetic questions in the embedded model's chat template, bf16, eager. Printed per
block size: the median time of a full rollout and of a prefill-only one (one new token), and the
prompt tokens a repeated request finds cached. Each request carries a seed, as the trainer's do,
unless ``--no-seed``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def quickstart_prompts(count: int) -> tuple[str, list[list[int]]]:
    """(model path, the token ids of the first ``count`` quickstart training prompts)."""
    from transformers import AutoTokenizer

    from tunecli.catalog import load_catalog
    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.data import load_splits, render_prompts
    from tunecli.trainer.embedded import resolve_model_path

    recipe = recipe_from_dict(load_catalog().preset("quickstart").recipe, [])
    path = resolve_model_path(recipe.model.path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, _ = load_splits(recipe.data, recipe.trainer.seed)
    samples = render_prompts(train[:count], tokenizer, system_prompt=recipe.data.system_prompt,
                             max_prompt_length=recipe.data.max_prompt_length, filter_overlong=False)
    return path, [s.token_ids for s in samples]


def worker(block: int, args: argparse.Namespace) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process, as the trainer's
    from vllm import LLM, SamplingParams, TokensPrompt

    path, prompts = quickstart_prompts(args.prompts * (args.batches + 2))
    llm = LLM(model=path, dtype="bfloat16", seed=0, max_model_len=256, enforce_eager=True,
              kv_cache_memory_bytes=256 * 2**20, block_size=block)

    def rollout(batch: int, max_tokens: int) -> float:
        chunk = prompts[batch * args.prompts : (batch + 1) * args.prompts]
        params = SamplingParams(n=args.n, temperature=1.0, max_tokens=max_tokens, detokenize=False,
                                seed=None if args.no_seed else 1234 + batch)
        llm.reset_prefix_cache()  # as the trainer's engine does before each rollout
        start = time.perf_counter()
        llm.generate([TokensPrompt(prompt_token_ids=p) for p in chunk], params, use_tqdm=False)
        return time.perf_counter() - start

    def cached_tokens_of_first_prompt() -> int:
        out = llm.generate([TokensPrompt(prompt_token_ids=prompts[0])], SamplingParams(max_tokens=1), use_tqdm=False)
        return out[0].num_cached_tokens

    for warm_up in (0, 1):  # not counted
        rollout(warm_up, args.max_new_tokens)
    batches = range(2, args.batches + 2)
    full = [rollout(b, args.max_new_tokens) for b in batches]
    prefill = [rollout(b, 1) for b in batches]
    cached_tokens_of_first_prompt()  # caches it
    return {"block": block, "full_s": statistics.median(full), "prefill_s": statistics.median(prefill),
            "prompt_tokens": len(prompts[0]), "cached": cached_tokens_of_first_prompt()}


def table(results: list[dict]) -> str:
    lines = ["| KV block (tokens) | rollout s (median) | prefill-only s (median) | cached of a repeated prompt |",
             "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['block']} | {r['full_s']:.3f} | {r['prefill_s']:.3f} | {r['cached']} of {r['prompt_tokens']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--no-seed", action="store_true")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    results = []
    for block in args.blocks:
        cmd = [sys.executable, __file__, "--worker", str(block), *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    seeds = "no seed" if args.no_seed else "a seed per request"
    print(f"{args.prompts} prompts x {args.n} samples, {args.max_new_tokens} new tokens, {seeds}, {args.batches} batches each")
    print(table(results))


if __name__ == "__main__":
    main()
