"""Find the ``python3 -m verl.trainer.main_ppo`` command in a script and evaluate its overrides.

Statements run in script order, so each override sees the variables assigned before it: plain and
``export``-ed assignments, and ``: "${VAR:=default}"`` lines that only set defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunecli.errors import TuneError
from tunecli.importers.verl.shell import Evaluator, Seg, ShellError, Word, parse_statements

ENTRY_POINTS = ("verl.trainer.main_ppo", "verl.trainer.main_grpo")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_DECLARATIONS = ("export", "local", "declare", "readonly")


@dataclass
class Override:
    key: str
    value: str
    line: int
    raw: str | None  # the value as written when it has no expansions (for 'missing $' detection)


def _leading_text(word: Word) -> str:
    return word.segs[0].text if word.segs and word.segs[0].kind == "lit" else ""


def _after(word: Word, cut: int) -> Word:
    """The word without its first ``cut`` literal characters (``NAME=`` or ``key=``)."""
    first = word.segs[0]
    return Word([Seg("lit", first.text[cut:], first.pos + cut), *word.segs[1:]], word.pos)


def _split_assignments(words: list[Word]) -> tuple[list[tuple[str, Word]], list[Word]]:
    """``[export] A=1 B=2 cmd args`` -> ([(A, 1), (B, 2)] as value words, [cmd, args])."""
    k = 1 if words[0].literal in _DECLARATIONS else 0
    assignments = []
    while k < len(words):
        m = _ASSIGN.match(_leading_text(words[k]))
        if not m:
            break
        assignments.append((m.group(1), _after(words[k], len(m.group(1)) + 1)))
        k += 1
    return assignments, words[k:]


def _is_entry_point(word_text: str) -> bool:
    return word_text in ENTRY_POINTS or word_text.endswith("main_ppo")


def _command_overrides(ev: Evaluator, args: list[Word]) -> list[Override]:
    """The key=value words after the entry point, expanded."""
    overrides = []
    for w in args:
        if w.segs and w.segs[0].kind == "special":
            continue  # "$@": the caller's extra overrides
        head = _leading_text(w)
        if "=" not in head:
            value = ev.word(w)
            if value.strip():
                ev.error(w.pos, f"'{value}' after the main_ppo command is not a key=value override.")
            continue
        key, _, rest = head.partition("=")
        value = ev.word(_after(w, len(key) + 1))
        literal = all(seg.kind == "lit" for seg in w.segs)
        overrides.append(Override(key.lstrip("+~"), value, ev.line(w.pos), rest if literal else None))
    return overrides


def _statements(text: str, ev: Evaluator) -> list[list[Word]]:
    try:
        return parse_statements(text)
    except ShellError as e:
        raise TuneError(f"line {ev.line(e.pos)}: {e}. Fix the script's quoting.", field="--from-verl") from None


def read_overrides(text: str) -> tuple[list[Override], Evaluator]:
    """The main_ppo command's key=value overrides, with variables expanded in script order."""
    ev = Evaluator(text)
    overrides: list[Override] = []
    found = False
    for words in _statements(text, ev):
        assignments, command = _split_assignments(words)
        if not command or words[0].literal == "export":
            for name, value_word in assignments:  # persistent assignments
                ev.assign(name, ev.word(value_word), value_word.pos)
            continue
        texts = [w.literal or "" for w in command]
        if texts[0] == ":":  # `: "${VAR:=default}"` only exists to set defaults
            for w in command[1:]:
                ev.word(w)
            continue
        if not any(_is_entry_point(t) for t in texts):
            continue
        found = True
        start = next(i for i, t in enumerate(texts) if _is_entry_point(t)) + 1
        overrides += _command_overrides(ev, command[start:])
    if not found:
        raise TuneError(
            "The script has no `python3 -m verl.trainer.main_ppo ...` command, so there is nothing to import. "
            "Pass a verl launch script (e.g. one of verl's examples/tuning/*.sh).",
            field="--from-verl",
        )
    return overrides, ev
