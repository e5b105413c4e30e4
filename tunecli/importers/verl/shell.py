"""A small reader for the shell that launch scripts are written in; it never runs anything.

It splits a script into simple commands (lists of words) with quotes, ``\\`` line continuations,
comments and redirections handled as the shell does, and expands words with the variables defined
so far: ``$VAR``, ``${VAR:-default}`` and friends, ``$((...))`` integer arithmetic. Command output
(``$(...)``, backquotes) cannot be known without running the script, so such a word stays as its
source text, marked ``Unknown``. Problems (a variable used but never defined, arithmetic over
something that is not a number) are recorded with line numbers, never raised one by one.
"""

from __future__ import annotations

import ast
import operator
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from tunecli.errors import did_you_mean

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Environment variables a script may read without defining them; their values come from here.
KNOWN_ENV = ("HOME", "USER", "PWD", "PATH", "HOSTNAME", "TMPDIR")


@dataclass
class Seg:
    """One piece of a shell word: literal text, $var / ${var...}, $((arith)), $(cmd), or $@."""

    kind: str  # "lit" | "var" | "arith" | "cmd" | "special"
    text: str
    pos: int


@dataclass
class Word:
    segs: list[Seg]
    pos: int

    @property
    def literal(self) -> str | None:
        """The word's text if it has no expansions."""
        return "".join(s.text for s in self.segs) if all(s.kind == "lit" for s in self.segs) else None


class Unknown(str):
    """A value only known when the script runs (command output): kept as its source text."""


class ShellError(Exception):
    def __init__(self, pos: int, message: str):
        super().__init__(message)
        self.pos = pos


# ---------------------------------------------------------------------------------------------
# Splitting a script into commands and words


def _matching(text: str, i: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes the one opened before ``i``."""
    depth = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'" and open_ == "(":
            j = text.find("'", i + 1)
            i = (j if j >= 0 else len(text)) + 1
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ShellError(i, f"unclosed '{open_}'")


def _dollar(text: str, i: int, segs: list[Seg]) -> int:
    """Parse the expansion starting at text[i] == '$'; append it; return the next index."""
    nxt = text[i + 1] if i + 1 < len(text) else ""
    if text.startswith("$((", i):
        end = _matching(text, i + 3, "(", ")")
        if end >= len(text) or text[end] != ")":
            raise ShellError(i, "unclosed '$((' arithmetic")
        segs.append(Seg("arith", text[i + 3 : end - 1], i))
        return end + 1
    if nxt == "(":
        end = _matching(text, i + 2, "(", ")")
        segs.append(Seg("cmd", text[i:end], i))
        return end
    if nxt == "{":
        end = _matching(text, i + 2, "{", "}")
        segs.append(Seg("var", text[i + 2 : end - 1], i))
        return end
    m = NAME.match(text, i + 1)
    if m:
        segs.append(Seg("var", m.group(0), i))
        return m.end()
    if nxt and (nxt in "@*#?$!-" or nxt.isdigit()):
        segs.append(Seg("special", "$" + nxt, i))
        return i + 2
    segs.append(Seg("lit", "$", i))
    return i + 1


def _backquoted(text: str, i: int, segs: list[Seg]) -> int:
    """Append the `command` starting at text[i] == '`' (kept as text); return the next index."""
    j = text.find("`", i + 1)
    if j < 0:
        raise ShellError(i, "unclosed backquote")
    segs.append(Seg("cmd", text[i : j + 1], i))
    return j + 1


class _StatementReader:
    """One pass over a script, collecting words into simple commands."""

    def __init__(self, text: str):
        self.text, self.n, self.i = text, len(text), 0
        self.statements: list[list[Word]] = []
        self.words: list[Word] = []
        self.segs: list[Seg] = []
        self.in_word, self.start = False, 0

    def read(self) -> list[list[Word]]:
        while self.i < self.n:
            self._step()
        self._end_statement()
        return self.statements

    def _lit(self, s: str, pos: int) -> None:
        if self.segs and self.segs[-1].kind == "lit":
            self.segs[-1].text += s
        else:
            self.segs.append(Seg("lit", s, pos))

    def _end_word(self) -> None:
        if self.in_word:
            self.words.append(Word(self.segs, self.start))
        self.segs, self.in_word = [], False

    def _end_statement(self) -> None:
        self._end_word()
        if self.words:
            self.statements.append(self.words)
        self.words = []

    def _step(self) -> None:
        text, i = self.text, self.i
        c = text[i]
        if c == "\\" and i + 1 < self.n and text[i + 1] == "\n":  # line continuation
            self.i += 2
        elif not self.in_word and c == "#":
            end = text.find("\n", i)
            self.i = self.n if end < 0 else end
        elif c in " \t\r":
            self._end_word()
            self.i += 1
        elif c in "\n;&|":
            self._end_statement()
            self.i += 1
        elif c in "<>":
            self._redirection()
        else:
            if not self.in_word:
                self.in_word, self.start = True, i
            self._word_char(c)

    def _redirection(self) -> None:
        """Drop a redirection: a preceding fd number (2>&1) and the target word."""
        if self.in_word and all(s.kind == "lit" and s.text.isdigit() for s in self.segs):
            self.segs, self.in_word = [], False
        self._end_word()
        text, i = self.text, self.i + 1
        while i < self.n and text[i] in "<>&":
            i += 1
        while i < self.n and text[i] in " \t":
            i += 1
        while i < self.n and text[i] not in " \t\n;|&":
            i += 1
        self.i = i

    def _word_char(self, c: str) -> None:
        text, i = self.text, self.i
        if c == "\\":
            self._lit(text[i + 1] if i + 1 < self.n else "", i)
            self.i = i + 2
        elif c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise ShellError(i, "unclosed single quote")
            self._lit(text[i + 1 : j], i)
            self.i = j + 1
        elif c == '"':
            self._double_quoted()
        elif c == "$":
            self.i = _dollar(text, i, self.segs)
        elif c == "`":
            self.i = _backquoted(text, i, self.segs)
        else:
            self._lit(c, i)
            self.i = i + 1

    def _double_quoted(self) -> None:
        text, i = self.text, self.i + 1
        while True:
            if i >= self.n:
                raise ShellError(self.start, "unclosed double quote")
            c = text[i]
            if c == '"':
                self.i = i + 1
                return
            if c == "\\" and i + 1 < self.n and text[i + 1] in '$`"\\\n':
                if text[i + 1] != "\n":
                    self._lit(text[i + 1], i)
                i += 2
            elif c == "$":
                i = _dollar(text, i, self.segs)
            elif c == "`":
                i = _backquoted(text, i, self.segs)
            else:
                self._lit(c, i)
                i += 1


def parse_statements(text: str) -> list[list[Word]]:
    """Split a script into simple commands (lists of words), dropping comments and redirections."""
    return _StatementReader(text).read()


# ---------------------------------------------------------------------------------------------
# Expanding words


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


class Evaluator:
    """Expands words with the variables defined so far, recording problems with line numbers."""

    def __init__(self, text: str):
        self.text = text
        self.vars: dict[str, Variable] = {}
        self.errors: list[str] = []
        self.env_used: dict[str, str] = {}
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
        self.errors.append(f"line {self.line(pos)}: {msg}")

    def assign(self, name: str, value: str, pos: int) -> None:
        self.vars[name] = Variable(value, self.line(pos))

    def lookup(self, name: str, pos: int) -> str | None:
        if name in self.vars:
            return self.vars[name].value
        if name in KNOWN_ENV:
            value = os.environ.get(name, "")
            self.env_used[name] = value
            return value
        hint = did_you_mean(name, list(self.vars))
        self.error(pos, f"${name} is used but never defined{hint}. Define it before this line, or give it a "
                        f"default: ${{{name}:-value}}.")
        return None

    def param(self, body: str, pos: int) -> str:
        """${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:=default}, ${NAME:+alternative}."""
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-=+])(.*))?", body, re.S)
        if not m:
            self.error(pos, f"${{{body}}} is a parameter expansion tune cannot read; use ${{NAME:-default}}.")
            return ""
        name, op, default = m.group(1), m.group(2), m.group(3)
        if op is None:
            return self.lookup(name, pos) or ""
        have = name in self.vars and (self.vars[name].value != "" or not op.startswith(":"))
        if op.endswith("+"):
            return self.expand_text(default, pos) if have else ""
        if have:
            return self.vars[name].value
        value = self.expand_text(default, pos)
        if op.endswith("="):
            self.assign(name, value, pos)
        return value

    def expand_text(self, text: str, pos: int) -> str:
        """Expand a fragment (a default value) with quote removal, as the shell does."""
        try:
            stmts = parse_statements(text)
        except ShellError:
            return text
        return " ".join(self.word(w, base=pos) for stmt in stmts for w in stmt)

    def arith(self, expr: str, pos: int) -> str:
        def name_value(m: re.Match) -> str:
            name = m.group(1) or m.group(2) or m.group(3)
            value = self.lookup(name, pos)
            if value is None:
                raise ValueError
            if not re.fullmatch(r"\s*-?\d+\s*", value):
                where = f" (set on line {self.vars[name].line})" if name in self.vars else ""
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
        """The word's value; ``Unknown`` when part of it is command output."""
        out = []
        unknown = False
        for s in word.segs:
            pos = base or s.pos
            if s.kind == "var":
                value = self.param(s.text, pos)
                unknown = unknown or isinstance(value, Unknown)
                out.append(value)
            elif s.kind == "arith":
                out.append(self.arith(s.text, pos))
            else:  # literal text, $@ and friends, and command output kept as its source
                out.append(s.text)
                unknown = unknown or s.kind == "cmd"
        value = "".join(out)
        return Unknown(value) if unknown else value
