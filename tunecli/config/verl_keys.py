"""verl's Hydra override keys and what each means in a tunecli recipe: the one key table.

Data first: ``DIRECT`` (same meaning, value copied), ``VALUE_RULES`` (keys whose value decides
what they mean), ``UNMAPPED_REASONS`` (no meaning here, and what tunecli does instead) and
``COMBINED`` (read together with other keys of the same command). ``map_verl_override`` looks one
override up; the script importer (``tune new --from-verl``) and every ``KEY=VALUE`` override
(``tune train/run -- KEY=VALUE``, ``tune new --set``, through ``config.io.apply_overrides``) share it.
Adding a key is one dict entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunecli.config.keys import field_info
from tunecli.config.trackers import TRACKERS
from tunecli.config.schema import Recipe
from tunecli.errors import TuneError

AR = "actor_rollout_ref."

# verl's defaults (ppo_trainer.yaml) where they differ from ours and matter: applied before the
# script's overrides, so that a key the script leaves out means what it means in verl.
VERL_DEFAULTS = {
    "rollout.n": 1,
    "actor.use_kl_loss": False,
    "actor.entropy_coeff": 0.0,
    "actor.param_offload": False,
    "actor.optimizer_offload": False,
    "rollout.gpu_memory_utilization": 0.5,
    "rollout.enable_sleep_mode": True,  # verl frees the engine's cache while training (free_cache_engine)
    "model.enable_gradient_checkpointing": False,
    "data.shuffle": True,
    "trainer.save_freq": -1,
    "trainer.test_freq": -1,
}
# verl's actor.ppo_max_token_len_per_gpu when use_dynamic_bsz is on and the script gives none
VERL_MAX_TOKENS_PER_GPU = "16384"

# verl key -> our dotted key (same meaning, value copied)
DIRECT = {
    "data.train_batch_size": "data.train_batch_size",
    "data.max_prompt_length": "data.max_prompt_length",
    "data.max_response_length": "data.max_response_length",
    "data.filter_overlong_prompts": "data.filter_overlong_prompts",
    "data.shuffle": "data.shuffle",
    "data.prompt_key": "data.prompt_key",
    "data.seed": "trainer.seed",
    "algorithm.norm_adv_by_std_in_grpo": "algorithm.norm_adv_by_std_in_grpo",
    "algorithm.filter_groups.enable": "algorithm.filter_groups",
    AR + "model.path": "model.path",
    AR + "model.lora_rank": "model.lora_rank",
    AR + "model.lora_alpha": "model.lora_alpha",
    AR + "model.target_modules": "model.target_modules",
    AR + "model.lora.rank": "model.lora_rank",  # verl's newer spelling (megatron LoRA)
    AR + "model.lora.alpha": "model.lora_alpha",
    AR + "model.enable_gradient_checkpointing": "model.enable_gradient_checkpointing",
    AR + "model.trust_remote_code": "model.trust_remote_code",
    AR + "actor.optim.lr": "actor.lr",
    AR + "actor.optim.weight_decay": "actor.weight_decay",
    AR + "actor.optim.lr_warmup_steps": "actor.lr_warmup_steps",
    AR + "actor.ppo_mini_batch_size": "actor.ppo_mini_batch_size",
    AR + "actor.ppo_micro_batch_size_per_gpu": "actor.ppo_micro_batch_size_per_gpu",
    AR + "actor.ppo_epochs": "actor.ppo_epochs",
    AR + "actor.use_kl_loss": "actor.use_kl_loss",
    AR + "actor.kl_loss_coef": "actor.kl_loss_coef",
    AR + "actor.kl_loss_type": "actor.kl_loss_type",
    AR + "actor.entropy_coeff": "actor.entropy_coeff",
    AR + "actor.clip_ratio_low": "actor.clip_ratio_low",
    AR + "actor.clip_ratio_high": "actor.clip_ratio_high",
    AR + "actor.clip_ratio_c": "actor.clip_ratio_c",
    AR + "actor.loss_agg_mode": "actor.loss_agg_mode",
    AR + "actor.grad_clip": "actor.grad_clip",
    AR + "actor.use_torch_compile": "actor.use_torch_compile",
    AR + "actor.fsdp_config.param_offload": "actor.param_offload",
    AR + "actor.fsdp_config.optimizer_offload": "actor.optimizer_offload",
    AR + "rollout.n": "rollout.n",
    AR + "rollout.temperature": "rollout.temperature",
    AR + "rollout.top_p": "rollout.top_p",
    AR + "rollout.top_k": "rollout.top_k",
    AR + "rollout.gpu_memory_utilization": "rollout.gpu_memory_utilization",
    AR + "rollout.tensor_model_parallel_size": "rollout.tensor_model_parallel_size",
    AR + "rollout.max_model_len": "rollout.max_model_len",
    AR + "rollout.max_num_seqs": "rollout.max_num_seqs",
    AR + "rollout.max_num_batched_tokens": "rollout.max_num_batched_tokens",
    AR + "rollout.enforce_eager": "rollout.enforce_eager",
    AR + "rollout.free_cache_engine": "rollout.enable_sleep_mode",
    AR + "rollout.enable_sleep_mode": "rollout.enable_sleep_mode",
    AR + "rollout.dtype": "rollout.dtype",
    "trainer.n_gpus_per_node": "launch.n_gpus_per_node",
    "trainer.nnodes": "launch.nnodes",
    "trainer.total_epochs": "trainer.total_epochs",
    "trainer.total_training_steps": "trainer.total_training_steps",
    "trainer.save_freq": "trainer.save_freq",
    "trainer.test_freq": "trainer.test_freq",
    "trainer.val_before_train": "trainer.val_before_train",
    "trainer.project_name": "trainer.project_name",
    "trainer.default_local_dir": "trainer.default_local_dir",
    "trainer.seed": "trainer.seed",
}

# verl key -> what it means together with the other keys of its command (read as a group by the
# script importer: the answer depends on the process count or on a partner key)
COMBINED = {
    AR + "actor.ppo_micro_batch_size": "deprecated in verl (a global count over all GPUs): give "
                                       "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu instead",
    AR + "actor.use_dynamic_bsz": "a token budget is on when actor.ppo_max_token_len_per_gpu is set",
    AR + "actor.ppo_max_token_len_per_gpu": "only used with use_dynamic_bsz=True",
    "custom_reward_function.path": "read with custom_reward_function.name as reward.function (file.py:function)",
    "custom_reward_function.name": "read with custom_reward_function.path as reward.function (file.py:function)",
}

# verl key (or prefix ending in '.' or '_') -> why it has no meaning here / what we do instead
UNMAPPED_REASONS = {
    "data.val_batch_size": "validation runs over data.val_size prompts in engine-sized batches",
    "data.truncation": "over-long prompts are dropped (data.filter_overlong_prompts) or refused, never cut",
    "data.return_raw_chat": "prompts always go through the model's chat template",
    "data.dataloader_num_workers": "prompts are loaded in the trainer process",
    "algorithm.kl_ctrl.": "KL is applied as a loss term (actor.kl_loss_coef), never inside the reward",
    AR + "model.use_remove_padding": "padding is handled inside the trainer",
    AR + "model.use_shm": "the model is loaded from its directory or the cache; no /dev/shm copy",
    AR + "model.use_fused_kernels": "plain PyTorch kernels; no fused-kernel switch",
    AR + "actor.strategy": "tunecli trains with FSDP2 (launch.strategy)",
    AR + "actor.fsdp_config.fsdp_size": "FSDP2 shards over all processes",
    AR + "actor.fsdp_config.": "FSDP2 settings other than offload are chosen by the trainer",
    AR + "actor.megatron.grad_offload": "FSDP2 offloads gradients with the parameters (actor.param_offload)",
    AR + "actor.megatron.": "no Megatron: FSDP2 shards over all processes (tensor/pipeline/expert parallel sizes "
                            "have no meaning here)",
    AR + "actor.policy_loss.": "the policy loss is the algorithm's (algorithm.name)",
    AR + "model.override_config.": "the model's config is used as published",
    AR + "actor.use_dynamic_bsz": "a token budget is on when actor.ppo_max_token_len_per_gpu is set",
    AR + "actor.ulysses_sequence_parallel_size": "no sequence parallelism; the memory estimate assumes none "
                                                 "(lower actor.ppo_micro_batch_size_per_gpu if it does not fit)",
    AR + "actor.optim.": "AdamW with actor.lr, actor.weight_decay, actor.lr_warmup_steps, actor.lr_scheduler_type",
    AR + "actor.checkpoint.": "checkpoints always hold what resuming needs",
    AR + "ref.": "the reference policy shares the actor's settings (LoRA: the base model with the adapter off)",
    AR + "rollout.log_prob_micro_batch_size": "log-probs are computed in actor.ppo_micro_batch_size_per_gpu chunks",
    AR + "rollout.log_prob_": "log-probs are computed in actor.ppo_micro_batch_size_per_gpu chunks",
    AR + "rollout.enable_chunked_prefill": "vLLM's scheduler decides (chunked prefill is on in vLLM V1)",
    AR + "rollout.load_format": "weights go to the engine from memory at every step, not from a file",
    AR + "rollout.layered_summon": "the adapter is merged and synced layer by layer by the engine module",
    AR + "rollout.mode": "rollouts are synchronous and colocated",
    AR + "rollout.val_kwargs.": "validation uses greedy decoding",
    AR + "rollout.engine_kwargs.": "engine options beyond the rollout.* fields are not exposed",
    AR + "rollout.": "no tunecli equivalent for this engine option",
    AR + "hybrid_engine": "the engine is always colocated with the trainer",
    "critic.": "GRPO-family algorithms have no critic",
    "reward_model.": "rewards are Python functions (reward.function), not reward models",
    "custom_reward_function.": "reward keyword arguments go in reward.kwargs",
    "trainer.experiment_name": "the recipe name names the run (--name)",
    "trainer.critic_warmup": "no critic",
    "trainer.default_hdfs_dir": "checkpoints stay in trainer.default_local_dir",
    "trainer.resume_mode": "a run resumes from its latest checkpoint (trainer.resume)",
    "trainer.validation_data_dir": "validation results are logged with the metrics",
    "trainer.rollout_data_dir": "rollouts are not dumped to disk",
    "trainer.balance_batch": "batches are split evenly by count",
    "trainer.device": "the device follows launch.hardware",
    "trainer.log_val_generations": "validation results are logged with the metrics",
    "ray_init.": "no Ray: processes are started by torchrun",
    "--config-path": "Hydra config files are not read; only the overrides on the command line are imported",
    "--config-name": "Hydra config files are not read; only the overrides on the command line are imported",
    "hydra.": "Hydra's own settings have no meaning here",
}

# verl keys that take a whole number although no DIRECT target says so
_NUMBER_KEYS = frozenset({AR + "actor.ppo_micro_batch_size"})


@dataclass(frozen=True)
class Mapped:
    """A verl override with a tunecli meaning."""

    key: str
    value: str
    sets: dict[str, Any] = field(default_factory=dict)  # dotted key -> value; strings as written
    note: str | None = None  # worth telling the user, not a problem
    dropped: str | None = None  # the part of the value with no meaning here (reported as unmapped)


@dataclass(frozen=True)
class Unmapped:
    """A verl override with no tunecli meaning, and why."""

    key: str
    value: str
    reason: str
    line: int = 0  # where the script sets it (0: not from a script)
    note: str | None = None


def as_bool(value: str) -> bool | None:
    """A Hydra boolean as verl reads it; None when it is not one."""
    low = value.strip().lower()
    return True if low in ("true", "1", "yes", "on") else False if low in ("false", "0", "no", "off") else None


def file_list(value: str) -> list[str]:
    """verl accepts one path or a Hydra list "['a.parquet', 'b.parquet']"."""
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        return [p.strip().strip("'\"") for p in v[1:-1].split(",") if p.strip()]
    return [v]


def unmapped_reason(key: str) -> str:
    """Why ``key`` has no tunecli meaning: its own entry, else the longest matching prefix."""
    if key in UNMAPPED_REASONS:
        return UNMAPPED_REASONS[key]
    prefixes = [p for p in UNMAPPED_REASONS if p.endswith((".", "_")) and key.startswith(p)]
    if prefixes:
        return UNMAPPED_REASONS[max(prefixes, key=len)]
    return "no tunecli equivalent"


def is_verl_key(key: str) -> bool:
    """Whether the table knows ``key`` (its own entry or a prefix), as opposed to a typo."""
    if key in DIRECT or key in VALUE_RULES or key in COMBINED or key in UNMAPPED_REASONS:
        return True
    return any(p.endswith((".", "_")) and key.startswith(p) for p in UNMAPPED_REASONS)


def takes_number(key: str) -> bool:
    """Whether the key's value is a number or a boolean (so a bare word in it is a mistake)."""
    if key in _NUMBER_KEYS:
        return True
    info = field_info(Recipe, DIRECT[key]) if key in DIRECT else None
    return info is not None and any(t in str(info.annotation) for t in ("int", "float", "bool"))


# ---------------------------------------------------------------------------------------------
# Keys whose value decides what they mean


def _kl_in_reward(key: str, value: str) -> Unmapped:
    if as_bool(value) is False:
        return Unmapped(key, value, "same as tunecli: KL is a loss term only")
    return Unmapped(key, value, "KL in the reward is not supported; use actor.use_kl_loss=true instead")


def _data_files(key: str, value: str) -> Mapped:
    files = file_list(value)
    dropped = f"tunecli reads one file per split; kept {files[0]}" if len(files) > 1 else None
    return Mapped(key, value, {key: files[0]}, dropped=dropped)


def _target_modules(key: str, value: str) -> Mapped:
    return Mapped(key, value, {DIRECT[key]: file_list(value) if value.strip().startswith("[") else value})


def _clip_ratio(key: str, value: str) -> Mapped:
    return Mapped(key, value, {"actor.clip_ratio_low": value, "actor.clip_ratio_high": value})


def _strategy(key: str, value: str) -> Unmapped:
    note = None if value in ("fsdp", "fsdp2") else f"actor.strategy={value} is trained with FSDP2 here."
    return Unmapped(key, value, UNMAPPED_REASONS[key], note=note)


def _engine(key: str, value: str) -> Mapped | Unmapped:
    if value in ("vllm", "hf"):
        return Mapped(key, value, {"rollout.name": value})
    if value in SERVED_BY_VLLM:
        return Mapped(key, value, {"rollout.name": "vllm"},
                      note=f"{key}={value}: {SERVED_BY_VLLM[value]} is not bundled; vLLM serves the rollouts.")
    return Unmapped(key, value, f"engine '{value}' is not bundled; using vllm")


# verl's algorithm.adv_estimator -> tunecli algorithm (critic-free, GRPO-shaped data)
ESTIMATORS = {
    "grpo": "grpo", "grpo_vectorized": "grpo", "drgrpo": "dr_grpo", "dr_grpo": "dr_grpo",
    "rloo": "rloo", "rloo_vectorized": "rloo",
    "reinforce_plus_plus": "reinforce_plus_plus", "reinforce_plus_plus_baseline": "reinforce_plus_plus_baseline",
    "gpg": "gpg", "grpo_passk": "grpo_passk",
}
# ... and those refused, each with why
REFUSED_ESTIMATORS = {
    "gae": "PPO's GAE needs a critic (a value model); tunecli trains critic-free algorithms only",
    "remax": "ReMax's baseline is a second, greedy rollout of every prompt, which tunecli's rollout does not make",
    "opo": "OPO's length-weighted baseline is not implemented",
    "spo": "SPO's value tracker is not implemented",
}
# verl's actor.policy_loss.loss_mode -> the tunecli algorithm it makes of a grpo estimator
LOSS_MODES = {"vanilla": None, "gspo": "gspo", "gpg": "gpg"}
REFUSED_LOSS_MODES = {
    "clip_cov": "Clip-Cov (clipping by covariance) is not implemented",
    "kl_cov": "KL-Cov (KL on high-covariance tokens) is not implemented",
    "geo_mean": "GMPO's geometric-mean loss is not implemented",
}
# Engines whose rollouts tunecli serves with vLLM (same sampling settings)
SERVED_BY_VLLM = {"sglang": "SGLang", "trtllm": "TensorRT-LLM"}


def _algorithm(key: str, value: str) -> Mapped:
    if value in ESTIMATORS:
        return Mapped(key, value, {"algorithm.name": ESTIMATORS[value]})
    why = REFUSED_ESTIMATORS.get(value, "it is not one of verl's critic-free estimators tunecli knows")
    raise TuneError(f"{key}={value} cannot be imported: {why}. Use one of {', '.join(ESTIMATORS)}.", field=key)


def _loss_mode(key: str, value: str) -> Mapped:
    if value in LOSS_MODES:
        algorithm = LOSS_MODES[value]
        return Mapped(key, value, {"algorithm.name": algorithm} if algorithm else {})
    why = REFUSED_LOSS_MODES.get(value, "tunecli does not know this loss")
    raise TuneError(f"{key}={value} cannot be imported: {why}. Use one of {', '.join(LOSS_MODES)}.", field=key)


def combine_algorithms(first: str | None, second: str) -> str:
    """Two keys naming the algorithm (adv_estimator, loss_mode): GSPO is grpo's estimator with the gspo loss."""
    if first in (None, second):
        return second
    if {first, second} == {"grpo", "gspo"}:
        return "gspo"
    raise TuneError(f"The overrides name two algorithms, {first} and {second} (algorithm.adv_estimator and "
                    "actor.policy_loss.loss_mode): tunecli runs the gspo loss with grpo advantages only. Keep one.",
                    field="algorithm.name")


def _megatron_offload(key: str, value: str) -> Mapped:
    target = "actor.param_offload" if key.endswith("param_offload") else "actor.optimizer_offload"
    return Mapped(key, value, {target: value}, note=f"{key} is Megatron's; tunecli offloads with FSDP2 ({target}).")


def _logger(key: str, value: str) -> Mapped:
    """verl's trainer.logger list: the trackers tunecli has are kept, any other is reported."""
    names = file_list(value)
    kept = [n for n in names if n in TRACKERS]
    other = [n for n in names if n not in TRACKERS]
    dropped = f"no tracker {', '.join(other)} here (tunecli has {', '.join(TRACKERS)})" if other else None
    return Mapped(key, value, {"trainer.logger": kept or ["console"]}, dropped=dropped)


VALUE_RULES: dict[str, Callable[[str, str], Mapped | Unmapped]] = {
    "algorithm.adv_estimator": _algorithm,
    "algorithm.use_kl_in_reward": _kl_in_reward,
    "data.train_files": _data_files,
    "data.val_files": _data_files,
    AR + "model.target_modules": _target_modules,
    AR + "actor.clip_ratio": _clip_ratio,
    AR + "actor.strategy": _strategy,
    AR + "rollout.name": _engine,
    AR + "actor.policy_loss.loss_mode": _loss_mode,
    AR + "actor.megatron.param_offload": _megatron_offload,
    AR + "actor.megatron.optimizer_offload": _megatron_offload,


    "trainer.logger": _logger,
}


def map_verl_override(key: str, value: str) -> Mapped | Unmapped:
    """What ``key=value`` (a verl override, Hydra's ``+``/``~`` already stripped) sets in a recipe.

    Raises TuneError for a value tunecli refuses (e.g. an algorithm that needs a critic). A key in
    ``COMBINED`` needs its partners; looked up alone it is reported with what it needs.
    """
    if key in VALUE_RULES:
        return VALUE_RULES[key](key, value)
    if key in DIRECT:
        return Mapped(key, value, {DIRECT[key]: value})
    if key in COMBINED:
        return Unmapped(key, value, COMBINED[key])
    return Unmapped(key, value, unmapped_reason(key))
