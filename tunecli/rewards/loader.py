"""The one reward loader: a recipe's reward functions -> checked callables, at the start of a run.

A function speaks one of three contracts (``contracts``): tunecli's ``(prompt, completion,
ground_truth, **columns)``, TRL's batched ``(prompts, completions, **columns)`` or verl's
``compute_score(data_source, solution_str, ground_truth, extra_info)``. ``Reward.score`` calls each
the way it expects and checks every value. A custom file is imported here and only here (never by
`tune new` or `tune validate`, see ``spec``).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunecli.errors import TuneError, did_you_mean, field_error
from tunecli.rewards import builtin
from tunecli.rewards.contracts import SIGNATURES, TRL, VERL, contract_of, parameters_from_signature
from tunecli.rewards.spec import BUILTIN, FIELD, FORMAT, RewardSpec, parse_reward_spec, reward_problems

RewardFn = Callable[..., Any]


class RewardError(TuneError):
    """A reward function raised, exited, overran reward.timeout_s or returned a non-finite number or a
    non-number: reported with the sample that caused it."""


class _Overrun(BaseException):
    """Raised into a reward call that ran past reward.timeout_s. A BaseException, so that a reward's own
    ``except Exception`` cannot swallow it and score the sample anyway."""


@dataclass
class RewardInput:
    """One sample as the rewards see it."""

    prompt: str  # the rendered prompt (chat template applied): tunecli's ``prompt``
    completion: str
    ground_truth: str
    columns: dict[str, Any] = field(default_factory=dict)  # the dataset's other columns
    messages: list[dict[str, str]] | None = None  # the dataset's prompt when it is chat messages
    raw_prompt: str | None = None  # the dataset's prompt when it is text (TRL's ``prompts``)

    def describe(self) -> str:
        return (f"The sample: prompt={_short(self.prompt)!r}, completion={_short(self.completion)!r}, "
                f"ground_truth={self.ground_truth!r}.")


def load_reward(
    text: str, *, format_pattern: str | None = None, timeout_s: float | None = None, **kwargs: Any
) -> Reward:
    """The reward named by ``text``, with the recipe's ``reward.kwargs`` bound as defaults of its columns.

    ``timeout_s`` (``reward.timeout_s``) limits each call; None: no limit."""
    problems = reward_problems(text, format_pattern)
    if problems:
        raise problems[0]
    spec = parse_reward_spec(text)
    if spec.name == FORMAT:
        fn, name = builtin.make_format(format_pattern), FORMAT
    elif spec.name is not None:
        fn, name = BUILTIN[spec.name], spec.name
    else:
        fn, name = _import_function(spec), spec.function
    contract, problem = contract_of(parameters_from_signature(inspect.signature(fn)))
    if problem:
        raise field_error(FIELD, text, problem, f"define it as {SIGNATURES[contract]} (the {contract} contract).")
    return Reward(name, text, contract, fn, {k: v for k, v in kwargs.items() if v is not None}, timeout_s)


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
    return fn


class Reward:
    """One reward function, called the way its contract expects, every value checked.

    ``score`` returns one value per sample: a float, or None where a TRL function says the sample is
    not its business; None from the other contracts, NaN, inf, a non-number, an exception or an
    overrun of ``timeout_s`` is a ``RewardError`` naming the function, the sample and the value.
    """

    def __init__(self, name: str, text: str, contract: str, fn: RewardFn, defaults: dict[str, Any],
                 timeout_s: float | None):
        self.name, self.text, self.contract, self.fn = name, text, contract, fn
        self.defaults, self.timeout_s = defaults, timeout_s
        self.params = parameters_from_signature(inspect.signature(fn))

    def __call__(self, prompt: str, completion: str, ground_truth: str, **columns: Any) -> float | None:
        """One sample (any contract): what the tests and one-off checks call."""
        return self.score([RewardInput(prompt, completion, ground_truth, columns, raw_prompt=prompt)])[0]

    def score(self, samples: list[RewardInput], stop_requested: Callable[[], bool] = lambda: False) -> list[float | None] | None:
        """A value per sample; None when ``stop_requested()`` turned true between two calls."""
        if self.contract == TRL:
            if not samples:
                return []
            values = self._guarded(lambda: self.fn(**self._batch_arguments(samples)), samples, batch=True)
            if not isinstance(values, (list, tuple)) or len(values) != len(samples):
                raise RewardError(
                    f"Reward '{self.text}' (TRL contract) returned {_short(repr(values))} for {len(samples)} "
                    f"completions; it must return a list with one float (or None) per completion. "
                    f"{samples[0].describe()}", field=FIELD)
            return [self._checked(v, s, allow_none=True) for v, s in zip(values, samples)]
        out = []
        for sample in samples:
            if stop_requested():  # asked to stop: the next call could be the one that hangs
                return None
            value = self._guarded(lambda: self._call_one(sample), [sample], batch=False)
            out.append(self._checked(value, sample, allow_none=False))
        return out

    def _columns(self, sample: RewardInput) -> dict[str, Any]:
        columns = {**self.defaults, **sample.columns}
        if not self.params.var_keyword:  # a strict user signature only gets the columns it names
            columns = {k: v for k, v in columns.items() if self.params.accepts_keyword(k)}
        return columns

    def _call_one(self, sample: RewardInput) -> Any:
        if self.contract != VERL:
            return self.fn(sample.prompt, sample.completion, sample.ground_truth, **self._columns(sample))
        columns = {**self.defaults, **sample.columns}
        arguments = {"data_source": columns.pop("data_source", None), "solution_str": sample.completion,
                     "ground_truth": sample.ground_truth}
        if self.params.accepts_keyword("extra_info"):
            arguments["extra_info"] = columns  # verl's extra_info: the row's other fields
        value = self.fn(**arguments)
        if isinstance(value, dict):  # verl's richer return: the score plus things to log
            if "score" not in value:
                raise ValueError(f"it returned a dict without a 'score' key: {_short(repr(value))}")
            return value["score"]
        return value

    def _batch_arguments(self, samples: list[RewardInput]) -> dict[str, Any]:
        """TRL's keyword arguments: prompts, completions and every column as a list, one item per sample."""
        chat = all(s.messages is not None for s in samples)
        arguments: dict[str, Any] = {
            "prompts": [s.messages if chat else (s.raw_prompt if s.raw_prompt is not None else s.prompt) for s in samples],
            "completions": [[{"role": "assistant", "content": s.completion}] if chat else s.completion for s in samples],
            "ground_truth": [s.ground_truth for s in samples],
        }
        columns = [{**self.defaults, **s.columns} for s in samples]
        for key in dict.fromkeys(k for c in columns for k in c):
            arguments.setdefault(key, [c.get(key) for c in columns])
        if not self.params.var_keyword:
            arguments = {k: v for k, v in arguments.items() if self.params.accepts_keyword(k)}
        return arguments

    def _guarded(self, call: Callable[[], Any], samples: list[RewardInput], *, batch: bool) -> Any:
        """``call()`` limited to ``timeout_s``; what the user's code raises becomes a RewardError."""
        where = f"on a batch of {len(samples)} completions" if batch else "on one sample"
        try:
            return _call_limited(call, self.timeout_s)
        except _Overrun:
            raise RewardError(
                f"Reward '{self.text}' took longer than reward.timeout_s = {self.timeout_s:g} s {where} and was "
                f"stopped. {samples[0].describe()} Fix: make the reward faster, or raise reward.timeout_s "
                "(null: no limit).", field="reward.timeout_s",
            ) from None
        # SystemExit too: a reward's sys.exit() would end the run with no message at all.
        except (Exception, SystemExit) as e:
            raise RewardError(
                f"Reward '{self.text}' failed with {type(e).__name__}: {e} ({where}). {samples[0].describe()} "
                "Fix the reward function (it must return a float for every completion).", field=FIELD,
            ) from e

    def _checked(self, value: Any, sample: RewardInput, *, allow_none: bool) -> float | None:
        """The reward as a float; a non-number or NaN/inf would poison every advantage and checkpoint after it."""
        if value is None and allow_none:
            return None
        number = None
        if not isinstance(value, (str, bytes)) and hasattr(value, "__float__"):
            try:
                number = float(value)
            except (TypeError, ValueError):  # e.g. a tensor of several numbers
                pass
        if number is not None and math.isfinite(number):
            return number
        kind = "a non-number" if number is None else "a non-finite number"
        allowed = "a finite float (or None, TRL contract)" if allow_none else "a finite float"
        raise RewardError(
            f"Reward '{self.text}' returned {kind}: {_short(repr(value))} ({type(value).__name__}). "
            f"{sample.describe()} Fix the reward function: it must return {allowed} for every completion.",
            field=FIELD,
        )


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


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]
