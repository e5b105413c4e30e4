"""Find the ``python3 -m verl.trainer.main_ppo`` command in a script and evaluate its overrides.

Statements run in script order, so each override sees the variables assigned before it: plain and
``export``-ed assignments, arrays, ``: "${VAR:=default}"`` lines that only set defaults, and ``if``
blocks that choose a value (both branches are reported).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunecli.errors import TuneError
from tunecli.importers.verl.bash import ArrayAssign, Branch, FunctionDef, Simple, Skipped, Statement, read_structure
from tunecli.importers.verl.expand import Deferred, Evaluator, Variable, deferred
from tunecli.importers.verl.shell import Seg, ShellError, Unknown, Word

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


def _pass_through(w: Word) -> bool:
    """``"$@"``, ``$*``, ``${@:2}``: the caller's own arguments, handed on to main_ppo."""
    return len(w.segs) == 1 and (w.segs[0].kind == "special" and w.segs[0].text in ("$@", "$*")
                                 or w.segs[0].kind == "var" and w.segs[0].text[:1] in "@*")


def _hydra_unquoted(value: str) -> str:
    """Hydra reads ``'text'`` and ``"text"`` as the text inside the quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _like(whole: str, text: str) -> str:
    """``text`` (a part of ``whole``) keeping what is known of ``whole``: command output, ${ENV} references."""
    if isinstance(whole, Unknown):
        return Unknown(text)
    if isinstance(whole, Deferred):
        return deferred(text, {n for n in whole.names if f"${{{n}}}" in text})
    return text


def _override(text: str, line: int, whole: str) -> Override:
    """One ``key=value`` out of an array or a split variable."""
    key, _, value = text.partition("=")
    return Override(key.lstrip("+~"), _like(whole, _hydra_unquoted(value)), line, None)


def _split_variable(ev: Evaluator, w: Word) -> tuple[list[str], str] | None:
    """An unquoted ``$VAR`` holding overrides (``DATA="a=1 b=2"`` ... ``$DATA``): split as the shell does."""
    if len(w.segs) != 1 or w.segs[0].kind != "var" or ev.text[w.pos:w.pos + 1] != "$":
        return None
    whole = ev.word(w)
    return whole.split(), whole


def _command_overrides(ev: Evaluator, args: list[Word]) -> list[Override]:
    """The key=value words after the entry point, expanded (array elements one by one)."""
    overrides = []
    for w in args:
        if _pass_through(w):
            ev.notes.append(f"line {ev.line(w.pos)}: the script hands its own arguments to main_ppo; an import "
                            "has none (add yours with --set).")
            continue
        items = ev.array_items(w)
        if items is not None:
            overrides += [_override(item, ev.line(w.pos), item) for item in items if "=" in item]
            continue
        split = _split_variable(ev, w)
        if split is not None:
            parts, whole = split
            overrides += [_override(p, ev.line(w.pos), whole) for p in parts if "=" in p]
            continue
        head = _leading_text(w)
        if "=" not in head:
            value = ev.word(w)
            if value.strip():
                ev.error(w.pos, f"'{value}' after the main_ppo command is not a key=value override.")
            continue
        key, _, rest = head.partition("=")
        value = ev.word(_after(w, len(key) + 1))
        literal = all(seg.kind == "lit" for seg in w.segs)
        value = _like(value, _hydra_unquoted(value))
        overrides.append(Override(key.lstrip("+~"), value, ev.line(w.pos), rest if literal else None))
    return overrides


def _structure(text: str, ev: Evaluator) -> list[Statement]:
    try:
        return read_structure(text)
    except ShellError as e:
        raise TuneError(f"line {ev.line(e.pos)}: {e}. {e.fix}", field="--from-verl") from None


_TESTS = {"=": True, "==": True, "!=": False}
_NUMERIC_TESTS = {"-eq": int.__eq__, "-ne": int.__ne__, "-lt": int.__lt__, "-le": int.__le__, "-gt": int.__gt__,
                  "-ge": int.__ge__}


def _decide(ev: Evaluator, condition: list[Word]) -> bool | None:
    """``[ A = B ]``, ``[[ A != B ]]``, ``test A == B`` over known values; None when it needs running."""
    texts = [w.literal for w in condition]
    if texts[:1] == ["test"]:
        condition = condition[1:]
    elif texts[:1] in (["["], ["[["]) and texts[-1] in ("]", "]]"):
        condition = condition[1:-1]
    else:
        return None
    if len(condition) == 2 and condition[0].literal in ("-n", "-z"):
        value = ev.word(condition[1])
        return None if isinstance(value, (Unknown, Deferred)) else (value != "") == (condition[0].literal == "-n")
    op = condition[1].literal if len(condition) == 3 else None
    if op not in _TESTS and op not in _NUMERIC_TESTS:
        return None
    left, right = ev.word(condition[0]), ev.word(condition[2])
    if isinstance(left, (Unknown, Deferred)) or isinstance(right, (Unknown, Deferred)):
        return None
    if op in _TESTS:
        return (left == right) == _TESTS[op]
    try:
        return _NUMERIC_TESTS[op](int(left), int(right))
    except ValueError:
        return None


class _Reader:
    """Walks the statements in order, keeping variables and the main_ppo command's overrides."""

    def __init__(self, ev: Evaluator):
        self.ev = ev
        self.overrides: list[Override] = []
        self.found = False
        self.functions: dict[str, FunctionDef] = {}
        self.calls = 0
        self.skipped: list[Skipped] = []

    def run(self, statements: list[Statement]) -> None:
        for st in statements:
            if isinstance(st, ArrayAssign):
                self.ev.assign_array(st.name, st.items, st.pos)
            elif isinstance(st, Branch):
                self.branch(st)
            elif isinstance(st, FunctionDef):
                self.functions[st.name] = st
            elif isinstance(st, Skipped):
                self.skipped.append(st)
            elif isinstance(st, Simple) and st.words[0].literal in self.functions and self.calls < 20:
                self.calls += 1  # a function the script defined: read its body here (never run)
                self.run(self.functions[st.words[0].literal].body)
            elif isinstance(st, Simple):
                self.simple(st.words)

    def simple(self, words: list[Word]) -> None:
        ev = self.ev
        assignments, command = _split_assignments(words)
        if not command or words[0].literal == "export":
            for name, value_word in assignments:  # persistent assignments
                ev.assign_word(name, value_word, value_word.pos)
            return
        texts = [w.literal or "" for w in command]
        if texts[0] == ":":  # `: "${VAR:=default}"` only exists to set defaults
            for w in command[1:]:
                ev.word(w)
            return
        if not any(_is_entry_point(t) for t in texts):
            return
        self.found = True
        start = next(i for i, t in enumerate(texts) if _is_entry_point(t)) + 1
        self.overrides += _command_overrides(ev, command[start:])

    def branch(self, st: Branch) -> None:
        """Both branches are read; the one the condition picks (``then`` if it needs running) is kept."""
        ev = self.ev
        before = dict(ev.vars)
        chosen = _decide(ev, st.condition)
        self.run(st.then)
        after_then = dict(ev.vars)
        ev.vars = dict(before)
        self.run(st.otherwise)
        after_else = ev.vars
        ev.vars = after_else if chosen is False else after_then
        changed = sorted(n for n in set(after_then) | set(after_else) if after_then.get(n) != after_else.get(n))
        ev.branch_only |= {n for n in changed if n not in ev.vars}
        if not changed:
            return
        shown = "; ".join(f"{n}: {_shown(after_then.get(n))} (then) or {_shown(after_else.get(n))} (else)"
                          for n in changed)
        why = ("the condition holds" if chosen else "the condition does not hold") if chosen is not None else \
            "the condition needs the script to run, so the `then` branch is used (choose with --env)"
        ev.notes.append(f"line {ev.line(st.pos)}: an `if` block chooses {shown}; {why}.")


def _shown(var: Variable | None) -> str:
    return "unset" if var is None else repr(str(var.value))


def read_overrides(text: str, env: dict[str, str] | None = None) -> tuple[list[Override], Evaluator]:
    """The main_ppo command's key=value overrides, with variables expanded in script order."""
    ev = Evaluator(text, env)
    reader = _Reader(ev)
    reader.run(_structure(text, ev))
    loops = [s for s in reader.skipped if "main_ppo" in text[s.pos:].split("done", 1)[0]]
    if not reader.found and loops:
        raise TuneError(f"line {ev.line(loops[0].pos)}: the main_ppo command is inside a `{loops[0].kind}` loop, which "
                        "tune does not follow (it would have to run the script). Write one main_ppo command outside "
                        "the loop and import that.", field="--from-verl")
    if not reader.found:
        raise TuneError(
            "The script has no `python3 -m verl.trainer.main_ppo ...` command, so there is nothing to import. "
            "Pass a verl launch script (e.g. one of verl's examples/tuning/*.sh).",
            field="--from-verl",
        )
    for name, default in ev.defaults_used.items():
        ev.notes.append(f"the script's argument ${name} is not given: its default {default!r} is used "
                        f"(give another with --env {name}=VALUE).")
    return reader.overrides, ev
