"""The recipe config: one pydantic schema shared by the wizard, the renderer and the trainer.

Leaf names follow verl where the concept is the same (``data.train_batch_size``,
``actor.kl_loss_coef``, ``rollout.gpu_memory_utilization`` ...), so verl users feel at home.
Each field's ``description`` is written once and reused as the wizard's help, the ``--help`` text
and the comment in the rendered YAML.

Batch-size semantics (the #1 confusion in verl threads), all counted in *prompts* unless noted:
  data.train_batch_size            prompts per training step (global, all ranks)
  rollout.n                        samples per prompt (the GRPO group)
  actor.ppo_mini_batch_size        prompts per optimizer step (train_batch_size / this = updates/step)
  actor.ppo_micro_batch_size_per_gpu  *samples* per forward/backward on one rank (grad accumulation)
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from tunecli.algorithms import (
    KLType,
    LossAggMode,
    algorithm_names,
    get_algorithm,
    unknown_algorithm_message,
)
from tunecli.config.sizes import billions
from tunecli.config.trackers import TRACKERS

Method = Literal["lora", "full"]
Engine = Literal["vllm", "hf"]
Strategy = Literal["fsdp2", "none"]
# The model that ships with tunecli (SmolLM2-135M-Instruct): the default, needs no download.
EMBEDDED_MODEL = "smollm2-135m"
# A file or directory name: letters, digits, '.', '_', '-' (and not '.' or '..').
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Upper bounds far above any real recipe that still catch a typo (an extra zero, a stray exponent)
# before it becomes an hour-long out-of-memory or a NaN model.
MAX_TOKENS = 1 << 20  # one sequence part (prompt or response): 1M tokens, the longest context models have
MAX_BATCH = 1 << 16  # prompts or samples in one batch
MAX_STEPS = 10_000_000
MAX_SEED = 2**31 - 1  # every library takes it (numpy and vLLM want < 2**32; a rank is added)


def allowed_range(info: FieldInfo) -> str | None:
    """'> 0 and <= 1' for a bounded number field (for error messages), None for any other field."""
    words = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    parts = [f"{sign} {_number(getattr(m, key))}" for m in info.metadata for key, sign in words.items() if hasattr(m, key)]
    return " and ".join(parts) or None


def _number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


class Section(BaseModel):
    """A config group: unknown keys are errors (reported with a 'did you mean')."""

    # No inf/nan anywhere: one non-finite number silently turns every weight into NaN.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    path: str = Field(
        EMBEDDED_MODEL,
        description="Model to train: 'smollm2-135m' (embedded, no download), a local HF directory, or a hub id.",
    )
    method: Method = Field("lora", description="'lora' trains a peft adapter; 'full' trains every weight.")
    lora_rank: int = Field(16, ge=0, le=4096, description="LoRA rank r (method lora). verl's examples use 32.")
    lora_alpha: int = Field(32, ge=1, le=65_536, description="LoRA alpha; the adapter is scaled by alpha / rank.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get an adapter: 'all-linear' or a list such as [q_proj, v_proj]."
    )
    enable_gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, about 30% more compute."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the trained weights (float32 is fastest on CPUs without AMX)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint (hub models only).")
    # Models by hub id (issue 12): the revision every loader uses, and a size when the shape is unknown here.
    revision: str | None = Field(
        None, description="Hub revision of model.path (branch, tag or commit) for every loader; null: main."
    )
    size: str | None = Field(
        None, description="Parameter count such as 8B or 500M, for the memory estimate when the model's "
        "config.json cannot be read where the recipe is written (offline, a cluster path); null: read it.",
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel of the trained model: auto = eager on the CPU for sequences up to 1024 "
        "tokens (measured 26% faster bf16 training passes than sdpa at 100 tokens), sdpa otherwise.",
    )


    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            billions(value)  # its ValueError names the value and the form
        return value


class DataConfig(Section):
    dataset: str = Field(
        "arithmetic", description="Dataset: arithmetic, countdown (generated, seeded), gsm8k, or custom."
    )
    train_files: str | None = Field(
        None, description="Training data for gsm8k/custom: a hub dataset, a .jsonl/.json/.csv/.parquet file or a "
        "save_to_disk folder.",
    )
    val_files: str | None = Field(None, description="Held-out data (the same kinds as data.train_files).")
    # Any dataset through `datasets` (issue 12): column names as verl's, hub subsets and splits.
    prompt_key: str | None = Field(
        None, description="Column holding the prompt (text or chat messages); null: prompt, question or problem."
    )
    answer_key: str | None = Field(
        None, description="Column holding the ground truth (a.b reads into a struct); null: reward_model.ground_truth, "
        "answer, solution or ground_truth. The other columns reach the reward as keyword arguments.",
    )
    subset: str | None = Field(None, description="Hub dataset subset (its config name), e.g. main for openai/gsm8k.")
    split: str = Field("train", description="Split of data.train_files (a hub dataset or a save_to_disk folder).")
    val_split: str = Field("test", description="Split of data.val_files (a hub dataset or a save_to_disk folder).")
    difficulty: int = Field(1, ge=1, le=5, description="Synthetic datasets: 1 (easy) to 5 (hard).")
    train_size: int = Field(2000, ge=1, le=100_000_000, description="Synthetic datasets: number of training prompts.")
    val_size: int = Field(64, ge=1, le=10_000_000, description="Held-out prompts used for validation accuracy.")
    system_prompt: str | None = Field(None, description="Optional system message for the chat template.")
    train_batch_size: int = Field(8, ge=1, le=MAX_BATCH, description="Prompts per training step, all ranks together.")
    max_prompt_length: int = Field(128, ge=8, le=MAX_TOKENS, description="Longest prompt in tokens, after the chat template.")
    max_response_length: int = Field(64, ge=1, le=MAX_TOKENS, description="Most new tokens sampled per response.")
    filter_overlong_prompts: bool = Field(True, description="Drop prompts over max_prompt_length instead of failing.")
    shuffle: bool = Field(True, description="Shuffle training prompts each epoch (seeded).")


class RewardConfig(Section):
    function: str = Field(
        "arithmetic",
        description="Reward: arithmetic, gsm8k, gsm8k_flexible, countdown, format, or path/to/file.py:function.",
    )
    format_pattern: str | None = Field(None, description="Regex a completion must match (reward 'format').")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the reward.")
    timeout_s: float | None = Field(
        30.0, gt=0, le=86_400,
        description="Most seconds one reward call may take; a slower call stops the run with the sample. "
        "null: no limit.",
    )
    truncated_score: float | None = Field(
        None, ge=-1000, le=1000,  # on the rewards' scale (about -1 to 1): beyond 1000 is a typo
        description="Score of a response cut at data.max_response_length (no EOS) instead of running the reward; "
        "null scores it like any other. 0 stops short-answer tasks from drifting into rambling.",
    )
    # -- several rewards (issue 13) --
    functions: list[str] | None = Field(
        None, min_length=1, max_length=64,
        description="Several rewards, each like reward.function; when set it replaces reward.function. "
        "The sample's reward is their weighted sum; each is logged as reward/NAME.",
    )
    weights: list[float] | None = Field(
        None, description="One weight per reward in reward.functions (default 1 each), as TRL's reward_weights.",
    )

    def function_list(self) -> list[str]:
        """The rewards a run calls: reward.functions, else reward.function alone."""
        return list(self.functions) if self.functions else [self.function]

    @model_validator(mode="after")
    def _one_weight_per_function(self) -> RewardConfig:
        if self.weights is not None:
            count = len(self.function_list())
            if len(self.weights) != count:
                raise ValueError(f"reward.weights has {len(self.weights)} weights for {count} reward function(s); "
                                 "give one weight per entry of reward.functions")
            if not all(-1e6 <= w <= 1e6 for w in self.weights):  # also refuses NaN
                raise ValueError("reward.weights must be finite numbers between -1e6 and 1e6")
        return self


class AlgorithmConfig(Section):
    name: str = Field(
        "grpo", description=f"Critic-free algorithm: {', '.join(algorithm_names())} (`tune list algorithms`)."
    )
    norm_adv_by_std_in_grpo: bool = Field(
        True, description="Divide group advantages by the group std (GRPO); off for Dr. GRPO."
    )
    filter_groups: bool | None = Field(
        None,
        description="Drop groups whose rewards are all equal (zero advantage) before the update (DAPO); "
        "null: the algorithm's default (true for dapo).",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in algorithm_names():
            raise ValueError(unknown_algorithm_message(name))
        return name


class ActorConfig(Section):
    lr: float = Field(1e-4, gt=0, le=1, description="Peak learning rate of AdamW.")
    lr_warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Linear warmup steps.")
    lr_scheduler_type: Literal["constant", "cosine"] = Field("constant", description="Schedule after warmup.")
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW weight decay.")
    ppo_mini_batch_size: int = Field(8, ge=1, le=MAX_BATCH, description="Prompts per optimizer step (<= train_batch_size).")
    ppo_micro_batch_size_per_gpu: int = Field(
        8, ge=1, le=MAX_BATCH, description="Samples per forward/backward pass on one rank (gradient accumulation)."
    )
    ppo_max_token_len_per_gpu: int | None = Field(
        None,
        ge=1,
        le=MAX_BATCH * 256,
        description="If set, micro-batches are packed up to this many tokens per rank instead of a fixed "
        "sample count (verl's use_dynamic_bsz).",
    )
    ppo_epochs: int = Field(1, ge=1, le=1000, description="Passes over each rollout batch.")
    # Above 1 the ratio's lower bound 1 - eps would be negative.
    clip_ratio_low: float = Field(0.2, ge=0, le=1, description="PPO clip epsilon below 1.")
    clip_ratio_high: float = Field(0.2, ge=0, le=10, description="PPO clip epsilon above 1 (DAPO clip-higher: 0.28).")
    clip_ratio_c: float | None = Field(
        3.0, gt=1, le=1000, description="Dual-clip bound for negative advantages; null turns dual clip off."
    )
    loss_agg_mode: LossAggMode = Field("token-mean", description="How token losses are averaged.")
    use_kl_loss: bool = Field(True, description="Add a KL(policy || reference) term to the loss.")
    kl_loss_coef: float = Field(0.001, ge=0, le=100, description="Coefficient of the KL loss term.")
    kl_loss_type: KLType = Field("low_var_kl", description="KL estimator: k1, k2, k3/low_var_kl.")
    entropy_coeff: float = Field(0.0, ge=0, le=10, description="Entropy bonus coefficient.")
    compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Matmul dtype of the training passes (torch.autocast); weights and optimizer state keep "
        "model.dtype. auto: bfloat16 on GPUs with bf16 and on CPUs with native bf16 (AVX512-BF16/AMX; bf16 "
        "matmul measured 2.6-4.2x fp32 there), else float32.",
    )
    use_torch_compile: bool = Field(
        False,
        description="torch.compile each decoder layer for the training passes (verl's key; torchtune's regional "
        "compile). The first update compiles (40 s on a 2-core CPU, ~6 s with inductor's cache warm), then "
        "updates ran 22-31% faster there: for long runs.",
    )
    grad_clip: float = Field(1.0, gt=0, le=1e6, description="Max global gradient norm (1e6: in effect no clipping).")
    param_offload: bool = Field(False, description="FSDP2: keep parameters on the CPU between uses (GPU).")
    optimizer_offload: bool = Field(False, description="FSDP2: keep optimizer state on the CPU (GPU).")


class RolloutConfig(Section):
    name: Engine = Field("hf", description="Rollout engine: vllm (fast, colocated) or hf (transformers generate).")
    n: int = Field(4, ge=1, le=1024, description="Samples per prompt: the GRPO group size (at most 1024).")
    temperature: float = Field(1.0, ge=0, le=10, description="Sampling temperature for training rollouts (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    # MAX_TOKENS: more than any vocabulary.
    top_k: int = Field(-1, ge=-1, le=MAX_TOKENS, description="Top-k sampling: -1 = off, else k >= 1.")
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="vLLM's memory share (on CPU: share of RAM for its KV cache)."
    )
    tensor_model_parallel_size: int = Field(1, ge=1, le=1024, description="vLLM tensor-parallel size (GPUs per engine).")
    max_model_len: int | None = Field(None, ge=1, le=2 * MAX_TOKENS, description="vLLM max sequence length; default prompt + response.")
    max_num_seqs: int = Field(256, ge=1, le=MAX_BATCH, description="vLLM: most sequences in one batch.")
    max_num_batched_tokens: int | None = Field(None, ge=1, le=MAX_BATCH * 256, description="vLLM: most tokens in one scheduler step.")
    enforce_eager: bool = Field(
        True,
        description="vLLM: run the model eagerly. false: CUDA graphs on GPU; on CPU torch.compile "
        "(about 40 s more at start, faster decoding; worth it for long runs).",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("bfloat16", description="Engine dtype.")
    enable_sleep_mode: bool = Field(False, description="vLLM on GPU: free the engine's memory during training.")
    lora_sync: Literal["adapter", "merge"] = Field(
        "merge",
        description="LoRA weight sync: merge (push W + BA each step; measured ~4x faster per step on CPU, "
        "vLLM's LoRA kernels slow every token) or adapter (push only the adapter as a LoRARequest).",
    )
    use_rollout_logprobs: bool = Field(
        False, description="Use the engine's log-probs as the old policy's instead of recomputing them."
    )

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        if value == 0:
            raise ValueError("top_k 0 is neither 'off' nor a k; set -1 to turn top-k off or a k >= 1")
        return value


Tracker = Literal[TRACKERS]  # trainer.logger's names (config.trackers)


class TrainerConfig(Section):
    project_name: str = Field("tunecli", description="Project in the trackers of trainer.logger (wandb project, mlflow experiment).")
    experiment_name: str = Field("run", description="Run name (and the run's name in each tracker); the wizard sets it to the recipe name.")
    total_epochs: int = Field(1, ge=1, le=MAX_STEPS, description="Passes over the training prompts.")
    total_training_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Stop after this many steps (overrides epochs).")
    save_freq: int = Field(-1, ge=-1, le=MAX_STEPS, description="Checkpoint every N steps (-1: only at the end).")
    test_freq: int = Field(-1, ge=-1, le=MAX_STEPS, description="Validate every N steps (-1: only before and after).")
    val_before_train: bool = Field(True, description="Measure validation accuracy before the first step.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed for data order, sampling and init.")
    default_local_dir: str | None = Field(None, description="Run directory; default runs/<experiment_name>.")
    max_checkpoints: int | None = Field(
        3, ge=1, le=10_000, description="Keep the last K checkpoints of the run, delete older ones; null keeps all."
    )
    resume: bool = Field(True, description="Resume from the latest checkpoint in the run directory.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Training device.")
    num_threads: int | None = Field(None, ge=1, le=4096, description="torch threads per process (default: cores/ranks).")
    max_minutes: float | None = Field(
        None, gt=0, le=527_040,
        description="Wall-clock budget (at most a year): no new step starts unless it and the final validation fit.",
    )
    total_training_minutes: float | None = Field(
        None, gt=0, le=527_040,
        description="The run's length in wall-clock minutes, model loading included and summed over resumes: the run "
        "ends when the next step and the final validation would not fit, and a cosine LR schedule decays over it "
        "(with total_training_steps, whichever ends first). trainer.max_minutes is one launch's budget; the schedule "
        "ignores it.",
    )
    # -- trackers (issue 13) --
    logger: list[Tracker] = Field(
        ["console"], description="Where metrics go besides runs/NAME/metrics.jsonl (always written): console, "
        "tensorboard, wandb, mlflow, swanlab, trackio (verl's names).",
    )
    log_completions: int = Field(
        0, ge=0, le=10_000, description="Samples per step (prompt, completion, reward, advantage) written to "
        "runs/NAME/completions.jsonl and to the trackers that have tables; 0: none.",
    )

    @field_validator("logger", mode="before")
    @classmethod
    def _logger_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # verl's trainer.logger=wandb

    @field_validator("save_freq", "test_freq")
    @classmethod
    def _every_n_steps(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("must be -1 (only at the end) or a step count >= 1; set it to -1 or a step count")
        return value

    # The run directory is deleted and overwritten by tune run: neither field may reach outside it.
    @field_validator("experiment_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value) or value in (".", ".."):
            raise ValueError(
                "the run is written to runs/<experiment_name>, so it must be a plain name: letters, digits, "
                "'.', '_' and '-' (at most 128, no '/'), e.g. my-run_1; set trainer.default_local_dir for "
                "another place"
            )
        return value

    @field_validator("default_local_dir")
    @classmethod
    def _no_parent_step(cls, value: str | None) -> str | None:
        if value is not None and (".." in PurePath(value).parts or not value.strip()):
            raise ValueError(
                "a run directory may not climb out through '..' (nor be empty); give a path without '..', "
                "e.g. runs/my-run or an absolute path"
            )
        return value


class LaunchConfig(Section):
    hardware: str = Field("cpu", description="Hardware catalogue name: cpu, h100, h800, h200, h20, a100-80g ...")
    nnodes: int = Field(1, ge=1, le=MAX_BATCH, description="Number of machines.")
    n_gpus_per_node: int = Field(1, ge=1, le=1024, description="Processes per machine (GPUs, or CPU processes).")
    strategy: Strategy = Field("none", description="fsdp2 shards training over processes; none = one process.")
    rdzv_endpoint: str = Field("127.0.0.1:29500", description="torchrun rendezvous HOST:PORT for nnodes > 1.")
    launcher: Literal["local", "slurm"] = Field("local", description="local (torchrun) or slurm (sbatch file).")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.n_gpus_per_node


class Recipe(Section):
    """A whole recipe: what `tune new` writes and `tune train` reads."""

    name: str = Field("quickstart", description="Recipe name: [model]_[algo][-lora]_[gpus]_[gpu]_[strategy]_[engine].")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    actor: ActorConfig = Field(default_factory=ActorConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)

    @model_validator(mode="after")
    def _fill_derived(self) -> Recipe:
        # Derived defaults live here, once, so the wizard and the trainer can never disagree.
        if self.algorithm.filter_groups is None:
            object.__setattr__(self.algorithm, "filter_groups", get_algorithm(self.algorithm.name).filter_groups)
        if self.rollout.max_model_len is None:
            object.__setattr__(
                self.rollout, "max_model_len", self.data.max_prompt_length + self.data.max_response_length
            )
        return self

    @property
    def max_model_len(self) -> int:
        assert self.rollout.max_model_len is not None
        return self.rollout.max_model_len
