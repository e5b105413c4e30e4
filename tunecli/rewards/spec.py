"""What ``reward.function`` names, checked without running any user code.

``tune new`` and ``tune validate`` call ``reward_problems``: a built-in name is looked up, a
``path/to/file.py:function`` is read and parsed with ``ast`` (the file exists, parses, defines the
function at top level with a signature that speaks one of the contracts in ``contracts``). The
file is imported only when a run starts (``loader.load_reward``), which applies the same checks first.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from tunecli.errors import TuneError, did_you_mean, field_error
from tunecli.rewards import builtin
from tunecli.rewards.contracts import SIGNATURES, TUNECLI, contract_of, parameters_from_ast

FIELD = "reward.function"
# name -> function; 'format' is built from reward.format_pattern.
BUILTIN = {
    "arithmetic": builtin.arithmetic,
    "gsm8k": builtin.gsm8k,
    "gsm8k_flexible": builtin.gsm8k_flexible,
    "countdown": builtin.countdown,
    "math": builtin.math_boxed,
}
FORMAT = "format"
BUILTIN_NAMES = (*BUILTIN, FORMAT)
SIGNATURE = SIGNATURES[TUNECLI]
CONTRACTS_HINT = "; ".join(SIGNATURES.values())


def reward_menu() -> list[tuple[str, str]]:
    """(name, one-line description) of every choice, for `tune list rewards` and the wizard."""
    menu = [(name, (fn.__doc__ or "").strip().splitlines()[0]) for name, fn in BUILTIN.items()]
    menu.append((FORMAT, "1.0 when the completion matches reward.format_pattern (a regex)."))
    menu.append(("custom", "Your function: path/to/file.py:function, tunecli (prompt, completion, ground_truth), "
                           "TRL (prompts, completions) or verl compute_score(data_source, solution_str, ...)."))
    return menu


@dataclass(frozen=True)
class RewardSpec:
    """A parsed ``reward.function``: a built-in ``name``, or ``function`` in ``file``."""

    text: str
    name: str | None = None
    file: Path | None = None
    function: str | None = None


def parse_reward_spec(text: str) -> RewardSpec:
    """'arithmetic' | 'format' | 'path/to/file.py:function'; an unknown name is a TuneError."""
    if text in BUILTIN_NAMES:
        return RewardSpec(text, name=text)
    file, sep, function = text.rpartition(":")
    if not sep or not file or not function:
        raise field_error(FIELD, text, f"unknown reward{did_you_mean(text, BUILTIN_NAMES)}",
                          f"use one of {', '.join(BUILTIN_NAMES)}, or a custom function as path/to/file.py:function.")
    return RewardSpec(text, file=Path(file).expanduser(), function=function)


def reward_problems(text: str, format_pattern: str | None) -> list[TuneError]:
    """Everything wrong with a reward setting that can be known without running it."""
    try:
        spec = parse_reward_spec(text)
    except TuneError as e:
        return [e]
    if spec.name == FORMAT:
        return format_pattern_problems(format_pattern)
    if spec.file is None:
        return []
    try:
        check_reward_source(spec)
    except TuneError as e:
        return [e]
    return []


def format_pattern_problems(pattern: str | None) -> list[TuneError]:
    if not pattern:
        return [field_error("reward.format_pattern", pattern, "reward 'format' needs a pattern",
                            "--set reward.format_pattern='<answer>.*</answer>'.")]
    try:
        re.compile(pattern)
    except re.error as e:
        return [field_error("reward.format_pattern", pattern, f"not a valid regex ({e})", "fix the pattern.")]
    return []


def check_reward_source(spec: RewardSpec) -> None:
    """The file exists, parses, and defines ``spec.function`` with a usable signature: read, never run."""
    assert spec.file is not None and spec.function is not None
    if not spec.file.is_file():
        raise field_error(FIELD, spec.text, f"the file '{spec.file}' does not exist",
                          "give path/to/file.py:function, relative to where you run tune.")
    try:
        tree = ast.parse(spec.file.read_bytes(), filename=str(spec.file))
    except SyntaxError as e:
        raise field_error(FIELD, spec.text, f"{spec.file} does not parse (SyntaxError on line {e.lineno}: {e.msg})",
                          "fix the file so that `python FILE` runs.") from None
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    node = functions.get(spec.function)
    if node is None:
        if spec.function in _other_top_level_names(tree):
            return  # bound by an assignment or import: only a real run can check it
        raise field_error(FIELD, spec.text, f"{spec.file} has no function '{spec.function}'"
                          f"{did_you_mean(spec.function, functions)}",
                          f"use one of {', '.join(sorted(functions)) or '(none defined)'}.")
    if isinstance(node, ast.AsyncFunctionDef):
        raise field_error(FIELD, spec.text, "it is an async function", f"define it with plain def: {CONTRACTS_HINT}.")
    contract, problem = contract_of(parameters_from_ast(node.args))
    if problem:
        raise field_error(FIELD, spec.text, problem, f"define it as {SIGNATURES[contract]} "
                          f"(the {contract} contract; the others: {CONTRACTS_HINT}).")


def _other_top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
    return names
