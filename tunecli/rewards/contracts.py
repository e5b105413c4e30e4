"""The three reward contracts, told apart by a function's parameters.

One rule for both readers: ``spec`` describes a function's parameters from its source (``ast``,
nothing run), the loader from the imported function (``inspect``); ``contract_of`` decides on that
description. The contracts:

- tunecli: ``reward(prompt, completion, ground_truth, **columns) -> float``, one sample per call;
- TRL: ``reward(prompts, completions, **columns) -> list[float | None]``, a batch per call, every
  argument by keyword, each column a list; ``None`` means "does not apply to this sample";
- verl: ``compute_score(data_source, solution_str, ground_truth, extra_info=None)``, one sample per
  call by keyword, returning a float or a dict with a ``score`` key.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass

TUNECLI, TRL, VERL = "tunecli", "trl", "verl"
SIGNATURES = {
    TUNECLI: "def reward(prompt, completion, ground_truth, **kwargs) -> float",
    TRL: "def reward(prompts, completions, **kwargs) -> list[float | None]",
    VERL: "def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict",
}
VERL_ARGUMENTS = ("data_source", "solution_str", "ground_truth", "extra_info")
TRL_ARGUMENTS = ("prompts", "completions")


@dataclass(frozen=True)
class Parameters:
    """What a signature accepts, however it was read."""

    positional: tuple[str, ...]  # positional-only and positional-or-keyword names, in order
    positional_only: frozenset[str]
    keyword_only: tuple[str, ...]
    required: frozenset[str]  # names without a default
    var_positional: bool
    var_keyword: bool

    def accepts_keyword(self, name: str) -> bool:
        if name in self.positional_only:  # by keyword it would land in **kwargs, not in this parameter
            return False
        return name in self.positional or name in self.keyword_only or self.var_keyword


def contract_of(params: Parameters) -> tuple[str, str | None]:
    """(contract, problem): the contract the parameters speak, and what keeps a call from binding
    (None when it binds)."""
    names = {*params.positional, *params.keyword_only}
    if "solution_str" in names:
        return VERL, _keyword_problem(params, VERL_ARGUMENTS[:3], VERL_ARGUMENTS)
    if "completions" in names:
        return TRL, _keyword_problem(params, ("completions",), None)
    positional = params.positional
    enough = len(positional) >= 3 or params.var_positional
    required_positional = sum(n in params.required for n in positional)
    required_keyword = [n for n in params.keyword_only if n in params.required]
    if enough and required_positional <= 3 and not required_keyword:
        return TUNECLI, None
    return TUNECLI, "its signature does not accept (prompt, completion, ground_truth)"


def _keyword_problem(params: Parameters, needed: tuple[str, ...], allowed: tuple[str, ...] | None) -> str | None:
    missing = [n for n in needed if not params.accepts_keyword(n)]
    if missing:
        return f"it takes no keyword argument {', '.join(missing)}"
    if allowed is not None:  # verl passes exactly these: any other required argument never gets a value
        extra = sorted(n for n in params.required if n not in allowed)
        if extra:
            return f"its required argument(s) {', '.join(extra)} are not among {', '.join(allowed)}"
    return None


def parameters_from_ast(args: ast.arguments) -> Parameters:
    positional = [a.arg for a in (*args.posonlyargs, *args.args)]
    with_default = positional[len(positional) - len(args.defaults):] if args.defaults else []
    required = {n for n in positional if n not in with_default}
    required |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None}
    return Parameters(
        tuple(positional), frozenset(a.arg for a in args.posonlyargs), tuple(a.arg for a in args.kwonlyargs),
        frozenset(required), args.vararg is not None, args.kwarg is not None,
    )


def parameters_from_signature(signature: inspect.Signature) -> Parameters:
    p = list(signature.parameters.values())
    positional = [x.name for x in p if x.kind in (x.POSITIONAL_ONLY, x.POSITIONAL_OR_KEYWORD)]
    return Parameters(
        tuple(positional), frozenset(x.name for x in p if x.kind is x.POSITIONAL_ONLY),
        tuple(x.name for x in p if x.kind is x.KEYWORD_ONLY),
        frozenset(x.name for x in p if x.default is x.empty and x.kind not in (x.VAR_POSITIONAL, x.VAR_KEYWORD)),
        any(x.kind is x.VAR_POSITIONAL for x in p), any(x.kind is x.VAR_KEYWORD for x in p),
    )
