"""The `vllm` rollout engine: one vLLM ``LLM`` colocated in the trainer's process, synced every step.

Every vLLM call of the project lives in this module. The engine runs in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so ``LLM.collective_rpc`` reaches the worker that owns the
model and weights move as tensors in memory: no restart, nothing written to disk but a LoRA adapter.

Weight sync (``update_weights``), after every optimizer step; the engine names the stream it wants
(``weight_format``) and ``trainer/weights.py`` builds it from the policy:
  * full fine-tuning: the policy's state dict is streamed, one tensor at a time, into the worker's
    ``reload_weights``, vLLM's in-place reload that runs the model's own ``load_weights`` and then
    re-applies any kernel-specific repacking (which is why calling ``model.load_weights`` directly
    breaks on the CPU backend);
  * LoRA, ``rollout.lora_sync=merge``: only the changed tensors, ``W + scale * B @ A`` computed on
    copies (the trained model is never touched), in the base model's names; every tensor after a
    level-2 sleep discarded the weights;
  * LoRA, ``rollout.lora_sync=adapter``: only the adapter (a few MB) is saved and served as a
    ``LoRARequest`` with a fresh id, so vLLM cannot reuse the previous step's adapter from its cache.

Log-probs: vLLM returns the sampled token's log-prob (``logprobs_mode="processed_logprobs"``: after
temperature / top-k / top-p, i.e. of the distribution actually sampled from). The trainer still
recomputes the old policy's log-probs itself unless ``rollout.use_rollout_logprobs`` is set: the engine
runs other kernels (paged attention, fused ops) in another dtype (bf16 by default vs fp32 in
training), so its numbers differ from the trainer's, and the PPO ratio ``exp(logp_new - logp_old)``
would then start away from 1 on the first mini-batch and clip samples the policy never moved.
(In float32 the engine's log-probs match transformers' to 2e-3: tests/test_vllm_engine.py.)
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import torch

from tunecli.config.sizes import kv_cache_bytes_per_token
from tunecli.console import is_verbose
from tunecli.trainer import heap
from tunecli.trainer.policy import DTYPES
from tunecli.trainer.rollout.base import EngineSettings, Rollout, SamplingSettings
from tunecli.trainer.weights import WeightFormat, WeightStream

# Must be set before vllm is imported: the engine core then runs in this process, so
# collective_rpc calls a function on the live worker (no pickling of weights, no spawn).
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
# vLLM logs several INFO lines per weight sync (every step); keep the trainer's live line readable.
# VLLM_LOGGING_LEVEL=INFO brings them back.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

log = logging.getLogger(__name__)


class _ExpectedReloadWarnings(logging.Filter):
    """Warnings of vLLM's weight reload that a sync expects. Every sync, RotaryEmbedding 'failed to
    load weights': it has none (its cos/sin cache is computed). A LoRA sync pushes only the merged
    layers, so during one (``partial``) the untouched embeddings and norms 'failed to load' and are
    'not loaded from checkpoint': they keep what they hold. The sync tests prove the output follows
    the new weights."""

    def __init__(self) -> None:
        super().__init__()
        self.partial = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "RotaryEmbedding: Failed to load weights" in message:
            return False
        return not (self.partial and ("Failed to load weights" in message or "were not loaded from checkpoint" in message))


class _ExpectedNarrowing(logging.Filter):
    """vLLM warns once per tensor it narrows while loading the files (122 lines for the embedded model,
    stored in float32, run in bfloat16). rollout.dtype asked for exactly that narrowing; any other
    mismatch still warns. Reading the files is faster than starting empty and pushing the policy's
    weights (the quickstart's setup: median 8.5 s against 9.4 s, 2026-12-04)."""

    def __init__(self, dtype: str) -> None:
        super().__init__()
        # rollout.dtype auto: vLLM picks a 16-bit dtype for float32 files
        self.narrow = (torch.bfloat16, torch.float16) if dtype == "auto" else (DTYPES[dtype],)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (str(record.msg).startswith("Attempted to load weight %s with dtype") and len(args) == 3
                    and args[1] == torch.float32 and args[2] in self.narrow)


_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise", "vllm.model_executor.model_loader.reload.inplace")
_LOADER_LOGGER = "vllm.model_executor.models.utils"
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
# vLLM's CPU default KV block is 128 tokens, and prefix caching shares only whole blocks: a GRPO
# group's n samples each prefilled their whole prompt (and every prompt the chat template's system
# preamble). 32 is the smallest block the CPU attention backend takes; with it the quickstart's
# rollout prefill takes 0.56 s instead of 1.23 s (benchmarks/prefix_sharing.py).
_CPU_KV_BLOCK_TOKENS = 32


def _kv_cache_bytes_for_cpu(settings: EngineSettings) -> int:
    """KV cache size on the CPU: what max_num_seqs full-length sequences need, capped by the recipe's
    share of RAM. vLLM's own CPU rule (share of RAM minus this process's RSS) breaks when colocated,
    because the trainer's model and optimizer already sit in this process's RSS."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(settings.model_path, revision=settings.revision)
    cfg = getattr(cfg, "text_config", cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    rollout = settings.rollout
    per_token = kv_cache_bytes_per_token(layers=cfg.num_hidden_layers, kv_heads=kv_heads, head_dim=head_dim, dtype=rollout.dtype)
    need = rollout.max_num_seqs * settings.max_model_len * per_token
    share = int(rollout.gpu_memory_utilization * psutil.virtual_memory().total)
    floor = 4 * settings.max_model_len * per_token  # vLLM must fit at least a few whole sequences
    return max(min(need, share), floor)


def _load_weights_into_worker(worker, items: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Runs inside the vLLM worker (collective_rpc): load checkpoint-format weights in place.

    ``reload_weights(weights_iterator=...)`` goes through the model's own ``load_weights`` (qkv and
    gate_up packing, tied heads) and then redoes the backend's post-load processing (the CPU backend
    repacks weights for its kernels). vLLM releases before that API fall back to ``load_weights``.
    """
    runner = worker.model_runner
    if not hasattr(runner.model, "lm_head"):
        # vLLM's Gemma 2 computes logits with the embedding and has no head to load; Llama and Gemma 3
        # keep a tied head of their own that must get the embedding's values (a dummy-started engine
        # would otherwise sample from a random head).
        items = ((name, tensor) for name, tensor in items if name != "lm_head.weight")
    reload = getattr(runner, "reload_weights", None)
    if reload is not None and "weights_iterator" in inspect.signature(reload).parameters:
        worker.reload_weights(weights_iterator=items)
    else:
        runner.model.load_weights(items)


class VLLMEngine:
    """Colocated vLLM: ``generate`` samples, ``update_weights`` makes the next sample use the streamed weights.

    It starts from the model's files (``settings.model_path``); a caller whose policy already differs
    from them (a resumed run, an evaluated checkpoint) pushes its weights before the first ``generate``.
    """

    def __init__(self, settings: EngineSettings):
        cfg = settings.rollout
        self.cuda = torch.cuda.is_available() and settings.device != "cpu"
        self.lora_adapter = settings.lora_rank is not None and cfg.lora_sync == "adapter"
        self.lora = settings.lora_rank is not None
        self.sleep_mode = bool(cfg.enable_sleep_mode and self.cuda)
        self._lora_request = None
        self._lora_dir = Path(tempfile.mkdtemp(prefix="tunecli-lora-")) if self.lora_adapter else None
        self._lora_id = 0
        self._asleep = False
        self._weights_awake = False  # asleep, but the weights' memory already woken for a sync
        self._weights_discarded = False
        self.last_sync_s = 0.0

        kwargs: dict = dict(
            model=settings.model_path,
            revision=settings.revision,
            tokenizer_revision=settings.revision,
            dtype=cfg.dtype,
            seed=settings.seed,
            max_model_len=settings.max_model_len,
            max_num_seqs=cfg.max_num_seqs,
            tensor_parallel_size=cfg.tensor_model_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager,
            trust_remote_code=settings.trust_remote_code,
            logprobs_mode="processed_logprobs",
            use_tqdm_on_load=is_verbose(),  # its bar passes disable=False explicitly, past TQDM_DISABLE
        )
        if cfg.max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        if self.lora_adapter:
            rank = settings.lora_rank
            kwargs.update(
                enable_lora=True,
                max_loras=1,
                max_cpu_loras=1,  # only the current step's adapter is ever needed
                max_lora_rank=next((r for r in _VLLM_LORA_RANKS if r >= rank), rank),
            )
        world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if world_size > 1:
            # One engine per rank inside torchrun's process group (TRL's colocate mode); the same
            # seed within a tensor-parallel group so its ranks sample identically.
            kwargs["distributed_executor_backend"] = "external_launcher"
            kwargs["seed"] = settings.seed + torch.distributed.get_rank() // cfg.tensor_model_parallel_size
        if self.cuda:
            kwargs["enable_sleep_mode"] = self.sleep_mode
        else:
            # enforce_eager=false: no CUDA graphs here, but vLLM compiles its model with torch.compile
            # (inductor): ~40 s more at start, decode ~18% faster on the 2-core test machine.
            kwargs["kv_cache_memory_bytes"] = _kv_cache_bytes_for_cpu(settings)
            kwargs["block_size"] = _CPU_KV_BLOCK_TOKENS
            if cfg.enable_sleep_mode:  # a warning: the recipe asked for something that cannot happen here
                log.warning("vllm on CPU: rollout.enable_sleep_mode is ignored (no sleep mode on the CPU backend)")

        from vllm import LLM

        self._reload_warnings = _ExpectedReloadWarnings()
        for logger in _RELOAD_LOGGERS:
            logging.getLogger(logger).addFilter(self._reload_warnings)
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process; the
        # trainer shares this process and must keep control of its own thread count.
        set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
        narrowing, loader = _ExpectedNarrowing(cfg.dtype), logging.getLogger(_LOADER_LOGGER)
        loader.addFilter(narrowing)  # the files are read here only: syncs arrive in the engine's dtype
        heap.settle()  # vLLM's start runs full collections: not over the objects already loaded
        start = time.perf_counter()
        try:
            self.llm = LLM(**kwargs)
        finally:
            loader.removeFilter(narrowing)
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)
        self.start_s = time.perf_counter() - start
        log.info("vllm engine started in %.1f s (%s, dtype %s)", self.start_s, settings.model_path, cfg.dtype)

    # -- generation -------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> Rollout:
        """n samples per prompt, prompt-major (sample j of prompt i at i * n + j), with log-probs."""
        from vllm import SamplingParams, TokensPrompt

        if self._asleep:
            raise RuntimeError("VLLMEngine.generate called while asleep: call wake_up() first")
        if self._weights_discarded:
            raise RuntimeError("the engine's weights were discarded by sleep(): call update_weights() first")
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,  # vLLM: 0 disables top-k
            max_tokens=sampling.max_new_tokens,
            logprobs=0 if sampling.logprobs else None,  # the sampled token's own log-prob only
            seed=sampling.seed,
            detokenize=False,  # the trainer decodes; skip vLLM's incremental detokenizer
        )
        # Each rollout starts from an empty prefix cache: blocks cached by an earlier call may hold
        # other weights, and even under the same weights (a step without an optimizer step) a draw that
        # hit them could differ from a resumed run's, which starts empty. Within a call, a group's
        # samples still share their prompt's blocks.
        self.llm.reset_prefix_cache()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            params,
            lora_request=self._lora_request,
            use_tqdm=False,
        )
        prompt_ids, response_ids, finished = [], [], []
        logprobs: list[list[float]] | None = [] if sampling.logprobs else None
        for prompt, out in zip(prompts, outputs, strict=True):
            for sample in sorted(out.outputs, key=lambda c: c.index):
                ids = list(sample.token_ids)
                prompt_ids.append(list(prompt))
                response_ids.append(ids)
                if logprobs is not None:
                    logprobs.append([step[tok].logprob for step, tok in zip(sample.logprobs or [], ids)])
                # "stop": EOS (kept as the last token) or a stop token; "length": hit max_new_tokens
                finished.append(sample.finish_reason == "stop")
        return Rollout(prompt_ids=prompt_ids, response_ids=response_ids, finished=finished, group_size=sampling.n, logprobs=logprobs)

    # -- weight sync ------------------------------------------------------------------------

    @property
    def weight_format(self) -> WeightFormat:
        if self.lora_adapter:
            return "adapter"
        # LoRA merge: only the merged layers change; the rest is still what the engine loaded,
        # unless a level-2 sleep discarded the weights.
        return "changed" if self.lora and not self._weights_discarded else "full"

    def update_weights(self, stream: WeightStream) -> None:
        """Make the next ``generate`` sample from the streamed weights (consumes the whole stream)."""
        start = time.perf_counter()
        if self._asleep and not self._weights_awake:
            # The trainer syncs right after its update, while the engine still sleeps: bring back
            # only the weights' memory; the KV cache returns in wake_up(), just before generation.
            self.llm.wake_up(tags=["weights"])
            self._weights_awake = True
        with torch.no_grad():
            if stream.adapter_config is not None:
                self._push_adapter(stream)
            else:
                dtype = self.llm.model_config.dtype  # cast here: vLLM warns per tensor otherwise
                self._reload_warnings.partial = stream.partial
                try:
                    self._push_weights((n, t.to(dtype) if t.is_floating_point() else t) for n, t in stream)
                finally:
                    self._reload_warnings.partial = False
        self._weights_discarded = False
        self.last_sync_s = time.perf_counter() - start

    def _push_weights(self, items: Iterator[tuple[str, torch.Tensor]]) -> None:
        # The iterator is consumed inside the (in-process) worker, so at most one gathered tensor
        # is held outside the engine at a time.
        self.llm.collective_rpc(_load_weights_into_worker, args=(items,))

    def _push_adapter(self, stream: WeightStream) -> None:
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        state = dict(stream)
        if not state:
            raise RuntimeError("rollout.lora_sync=adapter: the policy has no LoRA layers to push")
        old_id = self._lora_id
        self._lora_id += 1
        path = self._lora_dir / f"step-{self._lora_id}"
        path.mkdir()
        save_file(state, str(path / "adapter_model.safetensors"))
        (path / "adapter_config.json").write_text(json.dumps(stream.adapter_config, default=str))
        # A fresh id: vLLM caches adapters by id and would otherwise keep serving the old tensors.
        self._lora_request = LoRARequest(f"policy-{self._lora_id}", self._lora_id, str(path))
        if old_id:
            self.llm.llm_engine.remove_lora(old_id)
            shutil.rmtree(self._lora_dir / f"step-{old_id}", ignore_errors=True)

    # -- memory -------------------------------------------------------------------------------

    def sleep(self) -> None:
        """Free the engine's GPU memory for the training phase (GPU with rollout.enable_sleep_mode)."""
        if not self.sleep_mode or self._asleep:
            return
        # Level 2 drops the weights too (they are re-pushed every step anyway); an adapter engine
        # keeps its base weights (level 1: offloaded to CPU) since only the adapter is re-pushed.
        level = 1 if self.lora_adapter else 2
        self.llm.sleep(level=level)
        self._asleep = True
        self._weights_awake = False
        self._weights_discarded = level == 2

    def wake_up(self) -> None:
        if not self._asleep:
            return
        # vLLM resumes scheduling once every tag is resident again.
        self.llm.wake_up(tags=["kv_cache"] if self._weights_awake else None)
        self._asleep = False
        self._weights_awake = False

    def close(self) -> None:
        for logger in _RELOAD_LOGGERS:
            logging.getLogger(logger).removeFilter(self._reload_warnings)
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            del llm
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)
            self._lora_dir = None
