"""Reward functions: ``resolve_reward(spec)`` turns a recipe's ``reward.function`` into a callable.

Every reward has the signature ``(prompt, completion, ground_truth, **extra) -> float``; ``extra``
holds the dataset's other columns (TRL's contract), so user functions should accept ``**kwargs``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from tunecli.errors import TuneError, did_you_mean
from tunecli.trainer.rewards import builtin

RewardFn = Callable[..., float]

BUILTIN: dict[str, RewardFn] = {
    "arithmetic": builtin.arithmetic,
    "gsm8k": builtin.gsm8k,
    "gsm8k_flexible": builtin.gsm8k_flexible,
    "countdown": builtin.countdown,
}
NAMES = [*BUILTIN, "format"]


class RewardError(TuneError):
    """A reward function raised or returned a non-number: reported with the sample that caused it."""


def resolve_reward(spec: str, **kwargs) -> RewardFn:
    """'arithmetic' | 'gsm8k' | ... | 'format' | 'path/to/file.py:function' -> checked callable.

    ``kwargs`` (the recipe's ``reward.kwargs`` and ``format_pattern``) are bound as defaults of
    ``extra``; dataset columns passed at call time override them.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    pattern = kwargs.pop("format_pattern", None)  # only the 'format' reward reads it
    if spec == "format":
        fn = builtin.make_format(pattern)
    elif spec in BUILTIN:
        fn = BUILTIN[spec]
    elif ":" in spec:
        fn = _load_custom(spec)
    else:
        raise TuneError(
            f"Unknown reward '{spec}'{did_you_mean(spec, NAMES)}. Use one of {', '.join(NAMES)}, "
            "or a custom function as path/to/file.py:function_name.",
            field="reward.function",
        )
    return _checked(fn, spec, kwargs)


def _load_custom(spec: str) -> RewardFn:
    path_str, _, name = spec.rpartition(":")
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise TuneError(
            f"Reward file '{path}' (from reward.function='{spec}') does not exist. Give a path to a .py file "
            "relative to where you run tune, then ':' and the function name.",
            field="reward.function",
        )
    module_name = f"tunecli_user_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # lets the file be pickled / import its own helpers
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise TuneError(
            f"Importing reward file '{path}' failed: {type(e).__name__}: {e}. Fix the file (it is run once at start).",
            field="reward.function",
        ) from e
    fn = getattr(module, name, None)
    if not callable(fn):
        found = [n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")]
        raise TuneError(
            f"Reward file '{path}' has no function '{name}'{did_you_mean(name, found)}. Functions there: "
            f"{', '.join(found) or 'none'}.",
            field="reward.function",
        )
    try:
        inspect.signature(fn).bind("p", "c", "g")
    except TypeError:
        raise TuneError(
            f"Reward function '{spec}' must accept (prompt, completion, ground_truth, **kwargs) and return a float.",
            field="reward.function",
        ) from None
    return fn


def _checked(fn: RewardFn, spec: str, defaults: dict) -> RewardFn:
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    named = set(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def reward(prompt: str, completion: str, ground_truth: str, **extra) -> float:
        extra = {**defaults, **extra}
        if not accepts_kwargs:  # a strict user signature only gets the columns it names
            extra = {k: v for k, v in extra.items() if k in named}
        try:
            value = fn(prompt, completion, ground_truth, **extra)
            return float(value)
        except Exception as e:
            raise RewardError(
                f"Reward '{spec}' failed with {type(e).__name__}: {e}. The sample: prompt={_short(prompt)!r}, "
                f"completion={_short(completion)!r}, ground_truth={ground_truth!r}. Fix the reward function "
                "(it must return a float for every completion).",
                field="reward.function",
            ) from e

    return reward


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]
