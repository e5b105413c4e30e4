# Test fixture: the mistakes users report (typos in variables, a missing '$', an undefined variable).
MODEL_PATH=Qwen/Qwen2.5-72B-Instruct
nproc_per_gpu=22nproc_per_gpu=22 # 16 ok, 32 oom, 22 ok
nnodes=1
ngpu_per_node=8
total_procs=$(( nproc_per_gpu * nnodes * ngpu_per_node ))

python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    data.train_files=$DATA_DIR/train.parquet \
    data.train_batch_size=total_procs \
    actor_rollout_ref.model.path=$MODLE_PATH \
    actor_rollout_ref.model.lora_rank=32 \
    trainer.n_gpus_per_node=$ngpu_per_node \
    trainer.total_epochs=15 $@
