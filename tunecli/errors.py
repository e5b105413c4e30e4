"""The one error type users see.

Every refusal (bad flag, bad config value, missing model, impossible memory budget) is raised as a
``TuneError`` whose message is a single paragraph naming the field, the value and a fix. The CLI
prints it and exits 1; it never shows a traceback for these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# What a trainer stopped on request (Ctrl-C, SIGTERM) exits with, as a shell reports SIGINT.
EXIT_INTERRUPTED = 130


class TuneError(Exception):
    """A user-facing error: one paragraph, field + value + fix."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def field_error(field: str, value: object, problem: str, fix: str) -> TuneError:
    """The one shape of a refusal: ``field = value: problem. Fix: fix``."""
    return TuneError(f"{field} = {value!r}: {problem}. Fix: {fix}", field=field)
