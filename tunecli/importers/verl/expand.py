"""Expanding shell words with the variables a script defined so far; nothing is ever run.

``$VAR``, ``${VAR:-default}`` and friends, positional parameters with defaults, arrays,
``$((...))`` integer arithmetic. Command output (``$(...)``) cannot be known without running the
script, so such a word stays as its source text, marked ``Unknown``; ``$(pwd)`` and variables the
environment supplies stay ``${NAME}`` references (``Deferred``) resolved where the job runs.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import operator
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tunecli.errors import did_you_mean
from tunecli.importers.verl.shell import ShellError, Unknown, Word, parse_statements

# Environment variables a script may read without defining them; their values come from here.
KNOWN_ENV = ("HOME", "USER", "PATH", "HOSTNAME", "TMPDIR")
# An undefined capitalised name this close to a defined one is a typo (MODLE_PATH), not the environment's.
TYPO_CUTOFF = 0.85



_ARITH_OPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod, ast.Pow: operator.pow,
}


def _eval_int(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
        return _ARITH_OPS[type(node.op)](_eval_int(node.left), _eval_int(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval_int(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ValueError("not integer arithmetic")


@dataclass
class Variable:
    value: str
    line: int
    errors: list[str] = field(default_factory=list)  # problems met while computing it (told if it is used)
    items: list[str] | None = None  # an array's elements


class Deferred(str):
    """A value holding ``${NAME}`` references to variables the environment supplies when the job runs."""

    names: frozenset[str] = frozenset()


def deferred(text: str, names: set[str] | frozenset[str]) -> str:
    if not names:
        return text
    value = Deferred(text)
    value.names = frozenset(names)
    return value


def _env_name(name: str) -> bool:
    """Environment variables are written in capitals by convention; lower-case names are the script's own."""
    return name.isupper() or name.startswith("_") and name[1:].isupper()


_PARAM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*|[0-9]+)(\[[@*]\])?(?:(:?[-=+?])(.*))?", re.S)
_TRIM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(##|#|%%|%)(.*)", re.S)
_PASS_THROUGH = re.compile(r"[@*](:[0-9]+(:[0-9]+)?)?")


class Evaluator:
    """Expands words with the variables defined so far, recording problems with line numbers.

    ``env``: values given for variables the environment (or the caller's arguments: ``1``, ``2``)
    supplies. A capitalised variable that is neither defined nor given stays a ``${NAME}`` reference
    (``Deferred``); a lower-case one is a mistake (bash would expand it to nothing).
    """

    def __init__(self, text: str, env: dict[str, str] | None = None):
        self.text = text
        self.vars: dict[str, Variable] = {n: Variable(v, 0) for n, v in (env or {}).items()}
        self.given = set(env or {})
        self.errors: list[str] = []
        self.env_used: dict[str, str] = {}
        self.defaults_used: dict[str, str] = {}  # positional parameter -> the default the script gave
        self.notes: list[str] = []
        self.branch_only: set[str] = set()  # set only in an `if` branch that is not taken
        self._sink: list[str] | None = None
        self._told: set[str] = set()
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line(self, pos: int) -> int:
        lo, hi = 0, len(self._line_starts)
        while lo < hi - 1:
            mid = (lo + hi) // 2
            if self._line_starts[mid] <= pos:
                lo = mid
            else:
                hi = mid
        return lo + 1

    def error(self, pos: int, msg: str) -> None:
        (self.errors if self._sink is None else self._sink).append(f"line {self.line(pos)}: {msg}")

    def assign(self, name: str, value: str, pos: int, errors: list[str] | None = None,
               items: list[str] | None = None) -> None:
        self.vars[name] = Variable(value, self.line(pos), list(errors or []), items)

    def assign_word(self, name: str, word: Word, pos: int) -> None:
        """``name=word``: problems in the value are only told if the variable is used."""
        sink, self._sink = self._sink, []
        value = self.word(word)
        errors, self._sink = self._sink, sink
        self.assign(name, value, pos, errors)

    def assign_array(self, name: str, words: list[Word], pos: int) -> None:
        sink, self._sink = self._sink, []
        items = [self.word(w) for w in words]
        errors, self._sink = self._sink, sink
        self.assign(name, " ".join(items), pos, errors, items)

    def _use(self, name: str) -> Variable:
        var = self.vars[name]
        if var.errors and name not in self._told:
            self._told.add(name)
            (self.errors if self._sink is None else self._sink).extend(var.errors)
        return var

    def lookup(self, name: str, pos: int) -> str | None:
        if name in self.vars:
            return self._use(name).value
        if name in KNOWN_ENV:
            value = os.environ.get(name, "")
            self.env_used[name] = value
            return value
        if name in self.branch_only:
            self.notes.append(f"line {self.line(pos)}: ${name} is only set in an `if` branch that is not taken: "
                              "empty here, as in bash.")
            return ""
        hint = did_you_mean(name, [n for n in self.vars if not n.isdigit()])
        if name.isdigit():
            self.error(pos, f"${name} is the script's argument {name}, which an import does not have. Give it with "
                            f"--env {name}=VALUE, or write ${{{name}:-default}} in the script.")
            return None
        if _env_name(name) and not difflib.get_close_matches(name, list(self.vars), n=1, cutoff=TYPO_CUTOFF):
            return deferred(f"${{{name}}}", {name})
        self.error(pos, f"${name} is used but never defined{hint}. Define it before this line, or give it a "
                        f"default: ${{{name}:-value}}.")
        return None

    def param(self, body: str, pos: int) -> str:
        """${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:=default}, ${NAME:+alternative}, ${1:-x}, ${ARR[@]}."""
        if _PASS_THROUGH.fullmatch(body):
            return ""  # the caller's own arguments: nothing at import (see command.py)
        trim = _TRIM.fullmatch(body)
        if trim:
            return self.trim(trim.group(1), trim.group(2), trim.group(3), pos)
        m = _PARAM.fullmatch(body)
        if not m:
            self.error(pos, f"${{{body}}} is a parameter expansion tune cannot read; use ${{NAME:-default}}.")
            return ""
        name, op, default = m.group(1), m.group(3), m.group(4)
        if op is None or op.endswith("?"):
            return self.lookup(name, pos) or ""
        have = name in self.vars and (self.vars[name].value != "" or not op.startswith(":"))
        if op.endswith("+"):
            return self.expand_text(default, pos) if have else ""
        if have:
            return self._use(name).value
        value = self.expand_text(default, pos)
        if name.isdigit():
            self.defaults_used[name] = value
        if op.endswith("="):
            self.assign(name, value, pos)
        return value

    def trim(self, name: str, op: str, pattern: str, pos: int) -> str:
        """${NAME#pat} ${NAME##pat} (shortest / longest prefix off), ${NAME%pat} ${NAME%%pat} (suffix)."""
        value = self.lookup(name, pos) or ""
        pattern = self.expand_text(pattern, pos)
        cuts = range(len(value) + 1) if op in ("#", "%") else range(len(value), -1, -1)
        for i in cuts:
            if op.startswith("#") and fnmatch.fnmatchcase(value[:i], pattern):
                return value[i:]
            if op.startswith("%") and fnmatch.fnmatchcase(value[len(value) - i:], pattern):
                return value[:len(value) - i]
        return value

    def expand_text(self, text: str, pos: int) -> str:
        """Expand a fragment (a default value) with quote removal, as the shell does."""
        try:
            stmts = parse_statements(text)
        except ShellError:
            return text
        parts = [self.word(w, base=pos) for stmt in stmts for w in stmt]
        names = {n for p in parts if isinstance(p, Deferred) for n in p.names}
        return deferred(" ".join(parts), names)

    def arith(self, expr: str, pos: int) -> str:
        def name_value(m: re.Match) -> str:
            name = m.group(1) or m.group(2) or m.group(3)
            value = self.lookup(name, pos)
            if value is None:
                raise ValueError
            if isinstance(value, Deferred):
                self.error(pos, f"$(({expr.strip()})) needs the value of ${name} now; give it with --env {name}=VALUE.")
                raise ValueError
            if not re.fullmatch(r"\s*-?\d+\s*", value):
                where = f" (set on line {self.vars[name].line})" if self.vars.get(name, Variable("", 0)).line else ""
                self.error(pos, f"${name} is {value!r}{where}, not a whole number, in $(({expr.strip()})). "
                                "Fix the assignment.")
                raise ValueError
            return f"({value.strip()})"

        try:
            py = re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)|\b([A-Za-z_]\w*)\b", name_value, expr)
        except ValueError:
            return "0"
        py = py.replace("/", "//").replace("////", "//")  # shell division is integer division
        try:
            return str(_eval_int(ast.parse(py.strip(), mode="eval").body))
        except (SyntaxError, ValueError, ZeroDivisionError, TypeError):
            self.error(pos, f"$(({expr.strip()})) is not integer arithmetic tune can evaluate.")
            return "0"

    def word(self, word: Word, base: int = 0) -> str:
        """The word's value; ``Unknown`` when part of it is command output, ``Deferred`` with ${ENV} references."""
        out = []
        unknown = False
        names: set[str] = set()
        for s in word.segs:
            pos = base or s.pos
            if s.kind == "var":
                value = self.param(s.text, pos)
                unknown = unknown or isinstance(value, Unknown)
                names |= value.names if isinstance(value, Deferred) else set()
                out.append(value)
            elif s.kind == "special" and s.text[1:].isdigit():  # $1: the script's argument
                out.append(self.param(s.text[1:], pos))
            elif s.kind == "arith":
                out.append(self.arith(s.text, pos))
            elif s.kind == "cmd" and s.text.replace(" ", "") in ("$(pwd)", "`pwd`"):
                out.append("${PWD}")  # the directory the job starts in: known when it runs
                names.add("PWD")
            else:  # literal text, $@ and friends, and command output kept as its source
                out.append(s.text)
                unknown = unknown or s.kind == "cmd"
        value = "".join(out)
        return Unknown(value) if unknown else deferred(value, names)

    def array_items(self, word: Word) -> list[str] | None:
        """The elements of ``"${NAME[@]}"`` (the whole word), else None."""
        if len(word.segs) != 1 or word.segs[0].kind != "var":
            return None
        m = re.fullmatch(r"([A-Za-z_]\w*)\[[@*]\]", word.segs[0].text)
        if not m:
            return None
        if m.group(1) not in self.vars:
            self.error(word.pos, f"the array {m.group(1)} is used but never defined.")
            return []
        var = self._use(m.group(1))
        return var.items if var.items is not None else [var.value]
