"""Peak memory per device for a recipe: weights, grads, optimizer, reference, activations, engine.

A first-order estimate meant to refuse impossible recipes before anything loads, not to predict
the allocator to the megabyte. Assumptions (stated once, here):
- FSDP2 shards weights, grads and AdamW state evenly over all processes; ``param_offload`` keeps
  weights and grads on the CPU (only about two layers are gathered on the device at a time) and
  ``optimizer_offload`` keeps the AdamW state there.
- AdamW keeps two fp32 moments per trainable parameter; LoRA trains only the adapter.
- The KL loss needs reference log-probs: with LoRA the base model (adapter off) is the reference;
  full fine-tuning keeps a second, frozen copy.
- Activations are counted for one micro-batch. Padding is removed and responses stop at EOS, so a
  sample holds about ``FILL`` of its maximum length; a token budget (ppo_max_token_len_per_gpu)
  is used as is. Gradient checkpointing keeps one hidden state per layer plus one layer's internals.
- The rollout engine takes ``gpu_memory_utilization`` of the device (vLLM: weights + KV cache). With
  sleep mode it releases that memory while training, so the peak is the larger phase, else the sum.
  On a CPU the share is RAM for the KV cache only and the engine's bf16 weights come on top.
- The step's samples (train_batch_size / processes prompts x rollout.n) are held from generation to
  the end of the update, each padded to the full prompt + response length: per response token
  ``DEVICE_BYTES_PER_RESPONSE_TOKEN`` on the device (old and reference log-probs, advantage, mask,
  fp32), and on a CPU per token also ``HOST_BYTES_PER_TOKEN`` (the ids as python ints and as padded
  int64 tensors, which live in host memory).
- Generation is transient (freed before the training passes, so it counts against the activations,
  not on top of them). The hf engine decodes ``max_num_seqs // n`` prompts x n samples at once
  (at least one prompt's group): their KV cache at full length plus ``SAMPLER_BYTES_PER_LOGIT`` per
  vocabulary entry; in a dtype other than the policy's it keeps its own copy of the weights, else
  FSDP2 gathers the full weights for generation. vLLM on a GPU sizes its KV cache after a profile
  run that includes the sampler, so its share covers it; on a CPU its per-step sampler tensors
  (up to max_num_seqs x vocab) come on top of the KV-cache share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunecli.catalog import HardwareEntry, ModelEntry
from tunecli.config.sizes import DTYPE_BYTES, GiB, kv_cache_bytes_per_token

FILL = 0.5
HOST_BYTES_PER_TOKEN = 48  # a python int in a list (36) + a padded int64 id (8) + its mask (4)
DEVICE_BYTES_PER_RESPONSE_TOKEN = 16  # old and reference log-probs, advantage, mask (fp32 each)
SAMPLER_BYTES_PER_LOGIT = 24  # hf: fp32 logits + the sampler's float64 softmax and cumulative sum
VLLM_SAMPLER_BYTES_PER_LOGIT = 12  # fp32 logits, probabilities and log-probs
_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_params(shape: ModelEntry, rank: int, target_modules: str | list[str]) -> int:
    """Adapter parameters: r * (in + out) for every targeted projection of every layer."""
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_size, shape.kv_heads * shape.head_size
    dims = {
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }
    names = _ALL_LINEAR if target_modules in ("all-linear", "all_linear") else [str(m) for m in target_modules]
    per_layer = sum(rank * (a + b) for n, (a, b) in dims.items() if n in names)
    return per_layer * shape.layers


@dataclass
class MemoryEstimate:
    device: str
    budget: int  # bytes per device (per process on a CPU)
    parts: dict[str, int] = field(default_factory=dict)  # resident training state
    activations: int = 0
    engine: int = 0
    sleep_mode: bool = False
    generation: int = 0  # transient: the rollout's KV cache and sampler tensors

    @property
    def resident(self) -> int:
        return sum(self.parts.values())

    @property
    def peak(self) -> int:
        if self.sleep_mode:
            return self.resident + max(self.engine + self.generation, self.activations)
        return self.resident + self.engine + max(self.generation, self.activations)

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget

    @property
    def over(self) -> int:
        return max(0, self.peak - self.budget)

    def breakdown(self) -> str:
        items = [*self.parts.items(), ("activations", self.activations), ("engine", self.engine),
                 ("generation", self.generation)]
        return ", ".join(f"{k} {v / GiB:.1f}" for k, v in items if v) + " GiB"

    def rows(self) -> list[tuple[str, str]]:
        rows = [(k, f"{v / GiB:.2f} GiB") for k, v in self.parts.items()]
        rows += [("activations (one micro-batch)", f"{self.activations / GiB:.2f} GiB")]
        rows += [("rollout engine share", f"{self.engine / GiB:.2f} GiB")]
        rows += [("rollout generation (KV cache, sampler)", f"{self.generation / GiB:.2f} GiB")]
        phase = " (sleep mode: larger phase)" if self.sleep_mode else ""
        rows += [(f"peak per device{phase}", f"{self.peak / GiB:.2f} of {self.budget / GiB:.1f} GiB")]
        return rows


def estimate(recipe, shape: ModelEntry, hw: HardwareEntry) -> MemoryEstimate:
    launch = recipe.launch
    shard = launch.world_size if launch.strategy == "fsdp2" else 1
    budget = hw.memory_bytes()
    if hw.kind == "cpu":
        budget //= launch.n_gpus_per_node  # processes on one machine share its RAM

    wb = DTYPE_BYTES[recipe.model.dtype]
    params = shape.params
    lora = recipe.model.method == "lora"
    trainable = lora_params(shape, recipe.model.lora_rank, recipe.model.target_modules) if lora else params
    layer_params = params // max(shape.layers, 1)
    actor = recipe.actor

    parts: dict[str, int] = {}
    if actor.param_offload:
        parts["weights (offloaded, 2 layers gathered)"] = 2 * layer_params * wb
    else:
        parts["weights"] = params * wb // shard + (layer_params * wb if shard > 1 else 0)
    trainable_on_device = trainable if (lora or not actor.param_offload) else 0
    parts["grads"] = trainable_on_device * wb // shard
    parts["optimizer (AdamW fp32)"] = 0 if actor.optimizer_offload else trainable * 8 // shard
    if not lora and actor.use_kl_loss:
        parts["reference model"] = 2 * layer_params * wb if actor.param_offload else params * wb // shard
    parts["rollout batch"] = rollout_batch_bytes(recipe, hw)

    # Activations of one micro-batch on one rank.
    seq = recipe.data.max_prompt_length + recipe.data.max_response_length
    if actor.ppo_max_token_len_per_gpu:
        tokens = actor.ppo_max_token_len_per_gpu
    else:
        tokens = int(actor.ppo_micro_batch_size_per_gpu * seq * FILL)
    kv_dim = shape.kv_heads * shape.head_size
    per_layer_token = 6 * shape.hidden + 4 * shape.intermediate + 2 * kv_dim  # elements, no checkpointing
    if recipe.model.enable_gradient_checkpointing:
        act = tokens * (shape.layers * shape.hidden + per_layer_token) * wb
    else:
        act = tokens * shape.layers * per_layer_token * wb
    logits = tokens * shape.vocab * wb  # log-probs are gathered from the logits of the micro-batch
    activations = act + logits

    rollout = recipe.rollout
    engine = engine_bytes(recipe, shape, hw, budget)
    sleep = bool(rollout.enable_sleep_mode and rollout.name == "vllm" and hw.kind == "gpu")
    generation = generation_bytes(recipe, shape, hw)
    if rollout.name == "hf" and not engine:  # it generates with the policy, whose full weights FSDP2 gathers
        weights_on_device = next(v for k, v in parts.items() if k.startswith("weights"))
        generation += max(0, params * wb - weights_on_device)
    return MemoryEstimate(hw.name, budget, parts, activations, engine, sleep, generation)


def engine_bytes(recipe, shape: ModelEntry, hw: HardwareEntry, budget: int) -> int:
    """What the rollout engine keeps for the whole run: vLLM's share, or the hf engine's own copy."""
    rollout = recipe.rollout
    if rollout.name == "vllm":
        if hw.kind == "cpu":
            share = int(rollout.gpu_memory_utilization * hw.memory_bytes()) // recipe.launch.n_gpus_per_node
            return share + shape.params * DTYPE_BYTES[rollout.dtype]
        return int(rollout.gpu_memory_utilization * budget)
    if hf_engine_dtype(recipe) != recipe.model.dtype:
        return shape.params * DTYPE_BYTES[hf_engine_dtype(recipe)]
    return 0


def prompts_per_rank(recipe) -> int:
    return -(-recipe.data.train_batch_size // recipe.launch.world_size)


def rollout_batch_bytes(recipe, hw: HardwareEntry) -> int:
    """The step's samples on one rank, held from generation to the end of the update."""
    d = recipe.data
    samples = prompts_per_rank(recipe) * recipe.rollout.n
    held = samples * d.max_response_length * DEVICE_BYTES_PER_RESPONSE_TOKEN
    if hw.kind == "cpu":
        held += samples * (d.max_prompt_length + d.max_response_length) * HOST_BYTES_PER_TOKEN
    return held


def hf_engine_dtype(recipe) -> str:
    return recipe.model.dtype if recipe.rollout.dtype == "auto" else recipe.rollout.dtype


def generation_bytes(recipe, shape: ModelEntry, hw: HardwareEntry) -> int:
    """What one rank's engine allocates for the sequences it decodes together (freed after the rollout)."""
    r, d = recipe.rollout, recipe.data
    if r.name == "hf":
        seqs = min(prompts_per_rank(recipe), max(1, r.max_num_seqs // r.n)) * r.n  # as HFEngine.generate
        kv = kv_cache_bytes_per_token(layers=shape.layers, kv_heads=shape.kv_heads, head_dim=shape.head_size,
                                      dtype=hf_engine_dtype(recipe))
        return seqs * (kv * (d.max_prompt_length + d.max_response_length) + shape.vocab * SAMPLER_BYTES_PER_LOGIT)
    if hw.kind == "cpu":
        seqs = min(r.max_num_seqs, prompts_per_rank(recipe) * r.n)
        return seqs * shape.vocab * VLLM_SAMPLER_BYTES_PER_LOGIT
    return 0


def engine_weights_per_rank(recipe, shape: ModelEntry) -> int:
    return shape.params * DTYPE_BYTES[recipe.rollout.dtype] // recipe.rollout.tensor_model_parallel_size


def kv_bytes_per_token(recipe, shape: ModelEntry) -> int:
    """K and V of every layer for one token (bf16), split over the tensor-parallel ranks."""
    per = kv_cache_bytes_per_token(layers=shape.layers, kv_heads=shape.kv_heads, head_dim=shape.head_size,
                                   dtype=recipe.rollout.dtype)
    return per // max(1, min(recipe.rollout.tensor_model_parallel_size, shape.kv_heads))
