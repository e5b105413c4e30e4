#!/bin/bash
# Test fixture: Hydra '+' keys, env defaults with ':=', quoted paths with spaces, a custom reward,
# keys with no tunecli equivalent (critic, reward model), a command-substituted run name.
: "${PROJECT:=my-dapo}"
RUN_NAME="dapo-$(date +%s)"
DATA="/data/my math/train.parquet"
clip_high=0.28

python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    algorithm.filter_groups.enable=True \
    data.train_files="['$DATA']" \
    "data.val_files=['/data/my math/test.parquet', '/data/extra.parquet']" \
    data.prompt_key=problem \
    data.train_batch_size=64 \
    data.max_prompt_length=1024 \
    data.max_response_length=2048 \
    actor_rollout_ref.model.path=Qwen/Qwen2.5-7B-Instruct \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.optim.weight_decay=0.1 \
    actor_rollout_ref.actor.ppo_mini_batch_size=32 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.actor.clip_ratio_low=0.2 \
    actor_rollout_ref.actor.clip_ratio_high=${clip_high} \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.strategy=megatron \
    actor_rollout_ref.rollout.name=sglang \
    actor_rollout_ref.rollout.n=16 \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.7 \
    +actor_rollout_ref.rollout.engine_kwargs.sglang.attention_backend=flashinfer \
    custom_reward_function.path="/work/rewards/math reward.py" \
    custom_reward_function.name=compute_score \
    critic.optim.lr=1e-5 \
    reward_model.enable=False \
    trainer.project_name="$PROJECT" \
    trainer.experiment_name="$RUN_NAME" \
    trainer.n_gpus_per_node=8 \
    trainer.nnodes=1 \
    trainer.total_training_steps=200
