"""Small faults a new user meets: menu column labels, the sbatch recipe's next step, shell completion."""

from __future__ import annotations

from tests.recipe_testutil import flat, tune


def test_list_strategies_labels_its_column_strategy():
    result = tune("list", "strategies")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "about" in line)
    assert "strategy" in header and "strategie " not in header and "strategie│" not in header


def test_sbatch_recipe_says_how_to_submit(tmp_path):
    result = tune("new", "--preset", "qwen2-72b_grpo_32_h800_fsdp_vllm", "--launcher", "slurm", "--name", "s",
                  "--out", tmp_path, "--yes")
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "Submit it: tune run" in text and "sbatch" in text and "Run it: bash" not in text
    local = tune("new", "--preset", "quickstart", "--name", "q", "--out", tmp_path, "--yes")
    assert "Run it: bash" in flat(local.output)


def test_shell_completion_is_offered():
    result = tune("--help")
    assert "--install-completion" in result.output and "--show-completion" in result.output
    assert "--verbose" in result.output
