"""Which experiment trackers ``trainer.logger`` may name, and whether each one's library is here.

One check for `tune new`, `tune validate` and the trainer's start: a chosen tracker whose library
is not installed is refused with the pip command, found with ``importlib.util.find_spec`` so that
nothing is imported by a check (the trainer imports a library only when it is chosen).
"""

from __future__ import annotations

import importlib.util

from tunecli.errors import TuneError, field_error

# tracker -> (module to find, pip package that provides it); console needs nothing.
TRACKER_LIBRARIES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "swanlab": ("swanlab", "swanlab"),
    "trackio": ("trackio", "trackio"),
}


TRACKERS = ("console", *TRACKER_LIBRARIES)


def tracker_problems(names: list[str]) -> list[TuneError]:
    """A refusal for each chosen tracker whose library is not installed."""
    problems = []
    for name in names:
        module, package = TRACKER_LIBRARIES.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            problems.append(field_error(
                "trainer.logger", names, f"'{name}' is chosen but its library ({module}) is not installed",
                f"pip install {package} (or pip install 'tunecli[trackers]' for all of them), "
                f"or leave '{name}' out of trainer.logger.",
            ))
    return problems
