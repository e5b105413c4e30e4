#!/usr/bin/env bash
set -xeuo pipefail
ENGINE=${1:-vllm}   # vllm or hf
MODEL=Qwen/Qwen2-7B-Instruct
DATA=(
    data.train_files=${RAY_DATA_HOME}/gsm8k/train.parquet   # from the cluster's environment
    data.train_batch_size=64
)
if [ "$ENGINE" = hf ]; then
    n=4
else
    n=8
fi
if [ -n "$FAST" ]; then lr=1e-5; else lr=1e-6; fi
python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    "${DATA[@]}" \
    actor_rollout_ref.model.path=$MODEL \
    actor_rollout_ref.actor.optim.lr=$lr \
    actor_rollout_ref.actor.ppo_mini_batch_size=32 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.rollout.name=$ENGINE \
    actor_rollout_ref.rollout.n=$n \
    trainer.default_local_dir=$(pwd)/ckpt/$CKPT_NAME \
    trainer.n_gpus_per_node=2 trainer.nnodes=1 ${@:2}
