"""Shell words as launch scripts write them; nothing is ever run.

``parse_statements`` splits text into words with quotes, ``\\`` line continuations, comments and
redirections handled as the shell does, each word kept as segments (literal text, ``${...}``,
``$((...))``, ``$(...)``) for ``expand`` to evaluate. The structure of a whole script (``if``
blocks, pipelines, arrays) is read by ``bash`` with bashlex; this module reads the words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    def __init__(self, pos: int, message: str, fix: str = "Fix the script's quoting."):
        super().__init__(message)
        self.pos, self.fix = pos, fix


# ---------------------------------------------------------------------------------------------
# Splitting a script into commands and words


def matching_bracket(text: str, i: int, open_: str, close: str) -> int:
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
        if c == "#" and open_ == "(" and (i == 0 or text[i - 1] in " \t\n"):  # a comment: to the end of line
            j = text.find("\n", i)
            i = j if j >= 0 else len(text)
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
        end = matching_bracket(text, i + 3, "(", ")")
        if end >= len(text) or text[end] != ")":
            raise ShellError(i, "unclosed '$((' arithmetic")
        segs.append(Seg("arith", text[i + 3 : end - 1], i))
        return end + 1
    if nxt == "(":
        end = matching_bracket(text, i + 2, "(", ")")
        segs.append(Seg("cmd", text[i:end], i))
        return end
    if nxt == "{":
        end = matching_bracket(text, i + 2, "{", "}")
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
