"""The catalogue's reward functions: pure ``(prompt, completion, ground_truth, **extra) -> float``."""

from __future__ import annotations

import ast
import logging
import operator
import re
from collections import Counter

# 1,200 is one number (thousands separators in groups of 3); "1,1" is two.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def _same_number(found: str | None, truth: str) -> bool:
    if found is None:
        return False
    a, b = _to_number(found), _to_number(truth)
    return a is not None and b is not None and abs(a - b) < 1e-6


def last_number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    return matches[-1] if matches else None


def arithmetic(prompt: str, completion: str, ground_truth: str, **extra) -> float:
    """1.0 when the last number in the completion equals the answer ("The answer is 11." counts)."""
    return 1.0 if _same_number(last_number(completion), ground_truth) else 0.0


def gsm8k(prompt: str, completion: str, ground_truth: str, **extra) -> float:
    """Strict GSM8K (verl's rule): the answer must follow '#### '; format only earns ``format_score``."""
    match = re.findall(r"#### (-?[0-9.,]+)", completion)
    if not match:
        return 0.0
    return 1.0 if _same_number(match[-1], ground_truth) else float(extra.get("format_score", 0.0))


def gsm8k_flexible(prompt: str, completion: str, ground_truth: str, **extra) -> float:
    """Flexible GSM8K: the last number anywhere in the completion."""
    return 1.0 if _same_number(last_number(completion), ground_truth) else 0.0


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval_expr(node: ast.AST) -> float:
    """Evaluate + - * / over integer literals only (no names, calls or powers)."""
    if isinstance(node, ast.Expression):
        return _eval_expr(node.body)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval_expr(node.left), _eval_expr(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_expr(node.operand)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    raise ValueError("unsupported expression")


def countdown(prompt: str, completion: str, ground_truth: str, **extra) -> float:
    """TinyZero's rule: 1.0 for a correct equation in <answer>, ``format_score`` (0.1) for a wrong one.

    The equation must use only the given numbers, each at most once.
    """
    format_score = float(extra.get("format_score", 0.1))
    match = re.findall(r"<answer>(.*?)</answer>", completion, flags=re.DOTALL)
    if not match:
        return 0.0
    equation = match[-1].strip()
    if not re.fullmatch(r"[\d+\-*/() .]+", equation):
        return format_score
    used = Counter(int(n) for n in re.findall(r"\d+", equation))
    available = Counter(int(n) for n in extra.get("numbers", []))
    if any(used[n] > available[n] for n in used):
        return format_score
    try:
        value = _eval_expr(ast.parse(equation, mode="eval"))
    except (ValueError, SyntaxError, ZeroDivisionError):
        return format_score
    return 1.0 if abs(value - float(ground_truth)) < 1e-6 else format_score


def make_format(pattern: str):
    """1.0 when the completion matches ``pattern`` (re.search, DOTALL); ``spec`` checked the pattern."""
    regex = re.compile(pattern, flags=re.DOTALL)

    def format_reward(prompt: str, completion: str, ground_truth: str, **extra) -> float:
        return 1.0 if regex.search(completion) else 0.0

    return format_reward


def last_boxed(text: str) -> str | None:
    r"""The contents of the last ``\boxed{...}`` (nested braces kept), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None  # never closed: no answer


def math_boxed(prompt: str, completion: str, ground_truth: str, **extra) -> float:
    r"""1.0 when the last \boxed{} answer equals the ground truth (math-verify: numbers, fractions, LaTeX)."""
    from math_verify import parse, verify  # sympy behind it: loaded only when the reward is used

    answer = last_boxed(completion)
    if answer is None:
        return 0.0
    # No math-verify timeouts: they use SIGALRM, the timer reward.timeout_s already holds (so its
    # warning that none is set is noise here).
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold = parse(f"${ground_truth}$", parsing_timeout=None)
    found = parse(f"${answer}$", parsing_timeout=None)
    return 1.0 if gold and found and verify(gold, found, timeout_seconds=None) else 0.0
