"""The one reward loader: a recipe's ``reward.function`` -> a checked callable, at the start of a run.

Every reward is called as ``(prompt, completion, ground_truth, **columns) -> float``; ``columns``
holds the dataset's other columns, so user functions should accept ``**kwargs``. A custom file is
imported here and only here (never by `tune new` or `tune validate`, see ``spec``).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from tunecli.errors import TuneError, did_you_mean, field_error
from tunecli.rewards import builtin
from tunecli.rewards.spec import BUILTIN, FIELD, FORMAT, SIGNATURE, RewardSpec, parse_reward_spec, reward_problems

RewardFn = Callable[..., float]


class RewardError(TuneError):
    """A reward function raised, exited, overran reward.timeout_s or returned a non-finite number or a
    non-number: reported with the sample that caused it."""


class _Overrun(BaseException):
    """Raised into a reward call that ran past reward.timeout_s. A BaseException, so that a reward's own
    ``except Exception`` cannot swallow it and score the sample anyway."""


def load_reward(
    text: str, *, format_pattern: str | None = None, timeout_s: float | None = None, **kwargs: Any
) -> RewardFn:
    """The reward named by ``text``, with the recipe's ``reward.kwargs`` bound as defaults of its columns.

    ``timeout_s`` (``reward.timeout_s``) limits each call; None: no limit."""
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
    return _checked(fn, text, {k: v for k, v in kwargs.items() if v is not None}, timeout_s)


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


def _checked(fn: RewardFn, text: str, defaults: dict[str, Any], timeout_s: float | None) -> RewardFn:
    parameters = inspect.signature(fn).parameters.values()
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters)
    named = {p.name for p in parameters}

    @functools.wraps(fn)
    def reward(prompt: str, completion: str, ground_truth: str, **columns: Any) -> float:
        columns = {**defaults, **columns}
        if not accepts_kwargs:  # a strict user signature only gets the columns it names
            columns = {k: v for k, v in columns.items() if k in named}
        sample = (f"The sample: prompt={_short(prompt)!r}, completion={_short(completion)!r}, "
                  f"ground_truth={ground_truth!r}.")
        try:
            value = _call_limited(lambda: fn(prompt, completion, ground_truth, **columns), timeout_s)
        except _Overrun:
            raise RewardError(
                f"Reward '{text}' took longer than reward.timeout_s = {timeout_s:g} s on one sample and was stopped. "
                f"{sample} Fix: make the reward faster, or raise reward.timeout_s (null: no limit).",
                field="reward.timeout_s",
            ) from None
        # SystemExit too: a reward's sys.exit() would end the run with no message at all.
        except (Exception, SystemExit) as e:
            raise RewardError(
                f"Reward '{text}' failed with {type(e).__name__}: {e}. {sample} Fix the reward function "
                "(it must return a float for every completion).",
                field=FIELD,
            ) from e
        return _finite(value, text, sample)

    return reward


class _UserCode:
    """Whether a reward's own code is running now (on the main thread, where signal handlers run)."""

    running = False


def reward_running() -> bool:
    """True while a reward's own code runs: the only place a signal handler may raise into it (Ctrl-C
    abandons the call, ``stopping.StopRules``), so the bookkeeping around the call always runs whole."""
    return _UserCode.running


def _call_limited(call: Callable[[], Any], seconds: float | None) -> Any:
    """``call()``, stopped by SIGALRM after ``seconds``.

    The alarm interrupts Python code and blocking waits (time.sleep, I/O) on the main thread. Off
    the main thread a signal handler cannot be installed, so there is no limit there. C code that
    never returns to the interpreter (a long C-extension call) is only stopped once it returns. A
    reward that sets its own alarm (``signal.alarm``, e.g. math_verify's timeout) replaces this one for
    that call: a process has one such timer.
    """
    on_main = threading.current_thread() is threading.main_thread()
    limited = on_main and seconds is not None
    if limited:
        previous = signal.signal(signal.SIGALRM, _overrun)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        _UserCode.running = on_main
        return call()
    finally:
        _UserCode.running = False
        if limited:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _overrun(signum, frame) -> None:
    if _UserCode.running:  # an alarm that lands after the call returned changes nothing
        raise _Overrun


def _finite(value: Any, text: str, sample: str) -> float:
    """The reward as a float; a non-number or NaN/inf would poison every advantage and checkpoint after it."""
    number = None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__float__"):
        try:
            number = float(value)
        except (TypeError, ValueError):  # e.g. a tensor of several numbers
            pass
    if number is None or not math.isfinite(number):
        kind = "a non-number" if number is None else "a non-finite number"
        raise RewardError(
            f"Reward '{text}' returned {kind}: {_short(repr(value))} ({type(value).__name__}). {sample} Fix the "
            "reward function: it must return a finite float for every completion.",
            field=FIELD,
        )
    return number


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]
