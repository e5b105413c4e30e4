"""The one reward loader: a recipe's ``reward.function`` -> a checked callable, at the start of a run.

Every reward is called as ``(prompt, completion, ground_truth, **columns) -> float``; ``columns``
holds the dataset's other columns, so user functions should accept ``**kwargs``. A custom file is
imported here and only here (never by `tune new` or `tune validate`, see ``spec``).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import sys
from collections.abc import Callable
from typing import Any

from tunecli.errors import TuneError, did_you_mean, field_error
from tunecli.rewards import builtin
from tunecli.rewards.spec import BUILTIN, FIELD, FORMAT, SIGNATURE, RewardSpec, parse_reward_spec, reward_problems

RewardFn = Callable[..., float]


class RewardError(TuneError):
    """A reward function raised or returned a non-number: reported with the sample that caused it."""


def load_reward(text: str, *, format_pattern: str | None = None, **kwargs: Any) -> RewardFn:
    """The reward named by ``text``, with the recipe's ``reward.kwargs`` bound as defaults of its columns."""
    problems = reward_problems(text, format_pattern)
    if problems:
        raise problems[0]
    spec = parse_reward_spec(text)
    if spec.name == FORMAT:
        fn = builtin.make_format(format_pattern)
    elif spec.name is not None:
        fn = BUILTIN[spec.name]
    else:
        fn = _import_function(spec)
    return _checked(fn, text, {k: v for k, v in kwargs.items() if v is not None})


def _import_function(spec: RewardSpec) -> RewardFn:
    assert spec.file is not None and spec.function is not None
    module_name = f"tunecli_user_reward_{abs(hash(str(spec.file.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, spec.file)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # lets the file be pickled / import its own helpers
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error is theirs to see
        raise field_error(FIELD, spec.text, f"importing {spec.file} failed ({type(e).__name__}: {e})",
                          "fix the file (it is run once when training starts).") from e
    fn = getattr(module, spec.function, None)
    if not callable(fn):
        found = [n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")]
        raise field_error(FIELD, spec.text, f"{spec.file} has no function '{spec.function}'"
                          f"{did_you_mean(spec.function, found)}", f"use one of {', '.join(found) or '(none defined)'}.")
    try:
        inspect.signature(fn).bind("p", "c", "g")
    except (TypeError, ValueError):
        raise field_error(FIELD, spec.text, "its signature does not accept (prompt, completion, ground_truth)",
                          f"define it as {SIGNATURE}.") from None
    return fn


def _checked(fn: RewardFn, text: str, defaults: dict[str, Any]) -> RewardFn:
    parameters = inspect.signature(fn).parameters.values()
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters)
    named = {p.name for p in parameters}

    @functools.wraps(fn)
    def reward(prompt: str, completion: str, ground_truth: str, **columns: Any) -> float:
        columns = {**defaults, **columns}
        if not accepts_kwargs:  # a strict user signature only gets the columns it names
            columns = {k: v for k, v in columns.items() if k in named}
        try:
            return float(fn(prompt, completion, ground_truth, **columns))
        except Exception as e:
            raise RewardError(
                f"Reward '{text}' failed with {type(e).__name__}: {e}. The sample: prompt={_short(prompt)!r}, "
                f"completion={_short(completion)!r}, ground_truth={ground_truth!r}. Fix the reward function "
                "(it must return a float for every completion).",
                field=FIELD,
            ) from e

    return reward


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]
