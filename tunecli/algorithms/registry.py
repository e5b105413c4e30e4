"""What an algorithm is, and the registries that name its parts. No torch here.

An algorithm (``AlgorithmSpec``) is a name plus the names of its advantage estimator and policy
loss, the recipe settings `tune new` applies when it is chosen, and its own recipe rules. The
estimator and loss functions are tensor code (``advantages.py``, ``losses.py``); they register
themselves here by name with ``@register_advantage`` / ``@register_policy_loss``, as verl's
``@register_adv_est`` / ``@register_policy_loss`` do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from tunecli.errors import TuneError, did_you_mean, field_error

if TYPE_CHECKING:
    from tunecli.config.schema import Recipe

LossAggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLType = Literal["k1", "k2", "k3", "low_var_kl", "kl", "mse"]

Fn = TypeVar("Fn", bound=Callable[..., Any])

# name -> function; filled when advantages.py / losses.py are imported (they need torch).
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Any]] = {}
POLICY_LOSSES: dict[str, Callable[..., Any]] = {}
_ALGORITHMS: dict[str, AlgorithmSpec] = {}


@dataclass(frozen=True)
class AlgorithmSpec:
    """One named algorithm: which estimator and loss it runs, and the recipe settings it implies.

    ``defaults``: dotted recipe keys -> values that choosing the algorithm applies (``tune new
    --algorithm``, the wizard). ``algorithm.name`` and ``algorithm.filter_groups`` are added from
    ``name`` and ``filter_groups``, so they are written once.
    ``filter_groups``: the value a recipe's ``algorithm.filter_groups: null`` resolves to.
    ``min_group_size``: the smallest ``rollout.n`` the estimator works with; ``group_size_reason``
    says why, in the refusal. ``grouped``: whether the advantage compares the samples of a prompt
    (false: ``rollout.n`` is only a number of samples, and n = 1 is normal).
    """

    name: str
    description: str
    advantage: str
    policy_loss: str = "vanilla"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    filter_groups: bool = False
    min_group_size: int = 1
    group_size_reason: str = ""
    grouped: bool = True

    def __post_init__(self) -> None:
        implied = {"algorithm.name": self.name, "algorithm.filter_groups": self.filter_groups}
        clashes = {k: v for k, v in self.defaults.items() if k in implied and implied[k] != v}
        if clashes:
            raise ValueError(f"algorithm {self.name!r}: defaults {clashes} contradict its name/filter_groups")
        # Read-only: specs are shared by every recipe of the process.
        object.__setattr__(self, "defaults", MappingProxyType({**implied, **self.defaults}))

    def problems(self, recipe: Recipe) -> list[TuneError]:
        """This algorithm's own rules about a recipe (``config.rules.batch_problems`` collects them)."""
        n = recipe.rollout.n
        if n >= self.min_group_size:
            return []
        why = f" ({self.group_size_reason})" if self.group_size_reason else ""
        return [field_error("rollout.n", n, f"algorithm {self.name} needs at least {self.min_group_size} samples "
                            f"per prompt{why}", f"set rollout.n to {max(4, self.min_group_size)} or more.")]


def register_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Add ``spec`` to the menu (`tune list algorithms`, ``algorithm.name``). Names are unique."""
    if spec.name in _ALGORITHMS and _ALGORITHMS[spec.name] != spec:
        raise ValueError(f"algorithm {spec.name!r} is already registered")
    _ALGORITHMS[spec.name] = spec
    return spec


def algorithm_names() -> list[str]:
    """Registered algorithm names, in registration order (the menu's order)."""
    return list(_ALGORITHMS)


def unknown_algorithm_message(name: str) -> str:
    """Why ``name`` is refused and what to choose instead (shared by the schema and ``get_algorithm``)."""
    choices = algorithm_names()
    return (f"'{name}' is not a registered algorithm{did_you_mean(name, choices)}; choose one of "
            f"{', '.join(choices)} (see `tune list algorithms`)")


def get_algorithm(name: str) -> AlgorithmSpec:
    """The spec called ``name``, or a TuneError naming ``algorithm.name`` with a 'did you mean'."""
    spec = _ALGORITHMS.get(name)
    if spec is None:
        raise TuneError(f"algorithm.name = {name!r}: {unknown_algorithm_message(name)}. Fix: set algorithm.name "
                        "to one of them (tune new --algorithm NAME).", field="algorithm.name")
    return spec


def _register_into(registry: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[[Fn], Fn]:
    def decorator(fn: Fn) -> Fn:
        if registry.get(name, fn) is not fn:
            raise ValueError(f"{kind} {name!r} is already registered as {registry[name].__qualname__}")
        registry[name] = fn
        return fn

    return decorator


def register_advantage(name: str) -> Callable[[Fn], Fn]:
    """Decorator: register an advantage estimator under ``name`` (see ``advantages.compute_advantages``)."""
    return _register_into(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable[[Fn], Fn]:
    """Decorator: register a per-token policy loss under ``name`` (see ``losses.policy_loss``)."""
    return _register_into(POLICY_LOSSES, "policy loss", name)
