"""The structure of a launch script, read by ``bashlex`` (a port of bash's own parser); never run.

bashlex gives commands, ``if`` blocks, pipelines and lists with the source position of every word;
each word's value is then read from the source text by ``shell`` (quotes, ``${...}`` expansions).
What bashlex cannot read is set aside first, keeping every position: array assignments
``NAME=( ... )`` (their elements are read by ``shell``), ``$(( ... ))`` arithmetic and ``$( ... )``
command substitutions (blanked for bashlex; ``shell`` reads them from the source, and never runs one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import bashlex
import bashlex.errors

from tunecli.importers.verl.shell import ShellError, Word, parse_statements, matching_bracket

_ARRAY_START = re.compile(r"(?m)^[ \t]*(?:(?:export|declare|local)(?:[ \t]+-a)?[ \t]+)?([A-Za-z_]\w*)=\(")
_SUBST_START = re.compile(r"\$\(")  # $( command ) and $(( arithmetic ))


@dataclass
class Simple:
    """A simple command: its words (assignments first, as written)."""

    words: list[Word]
    pos: int


@dataclass
class ArrayAssign:
    name: str
    items: list[Word]
    pos: int


@dataclass
class Branch:
    """``if COND; then A; [elif ...;] else B; fi``: the condition's words and each branch's statements."""

    condition: list[Word]
    then: list[Statement]
    otherwise: list[Statement]
    pos: int


@dataclass
class FunctionDef:
    """``name() { ... }``: its body is read where the script calls it."""

    name: str
    body: list[Statement]
    pos: int


@dataclass
class Skipped:
    """A loop, function or other compound the reader does not follow (reported if it matters)."""

    kind: str
    pos: int


Statement = Simple | ArrayAssign | Branch | FunctionDef | Skipped


@dataclass
class _Masked:
    text: str
    arrays: dict[int, ArrayAssign] = field(default_factory=dict)  # position of NAME -> the assignment


def _blank(text: str, start: int, end: int) -> str:
    """Replace text[start:end] with spaces, keeping newlines (so positions and line numbers hold)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def _mask(text: str) -> _Masked:
    masked = _Masked(text)
    end = re.search(r"\\\n?[ \t\n]*\Z", text)
    if end:  # a line continuation into the end of the file: bash reads nothing more; bashlex stops
        masked.text = _blank(masked.text, end.start(), end.start() + 1)
    for m in _ARRAY_START.finditer(text):
        end = matching_bracket(text, m.end(), "(", ")")
        body_start = m.end()
        items = [w for stmt in parse_statements(text[body_start:end - 1]) for w in stmt]
        for w in items:  # positions relative to the script
            w.pos += body_start
            for s in w.segs:
                s.pos += body_start
        masked.arrays[m.start(1)] = ArrayAssign(m.group(1), items, m.start(1))
        masked.text = _blank(masked.text, m.end() - 1, end)
    for m in _SUBST_START.finditer(text):
        if masked.text[m.start()] != "$":
            continue  # inside an array or a substitution already set aside
        end = matching_bracket(text, m.end(), "(", ")")  # past the ')' that closes '$(' (and '$((')
        masked.text = masked.text[:m.start()] + "_" * (end - m.start()) + masked.text[end:]
    return masked


def _word_at(text: str, start: int, end: int) -> Word:
    """The word written at text[start:end], read with quotes and expansions, positions in the script."""
    stmts = parse_statements(text[start:end])
    words = [w for stmt in stmts for w in stmt]
    segs = [s for w in words for s in w.segs]
    for s in segs:
        s.pos += start
    return Word(segs, start)


class _Walker:
    def __init__(self, text: str, masked: _Masked):
        self.text, self.masked = text, masked

    def nodes(self, nodes: list) -> list[Statement]:
        out: list[Statement] = []
        for node in nodes:
            out += self.node(node)
        return out

    def node(self, node) -> list[Statement]:
        kind = node.kind
        if kind == "command":
            return self.command(node)
        if kind in ("list", "pipeline"):
            return self.nodes(node.parts)
        if kind == "compound":
            return self.nodes([p for p in node.list if p.kind not in ("reservedword", "operator")])
        if kind == "if":
            items = [p.word if p.kind == "reservedword" else p for p in node.parts]
            return [self.branch(items, node.pos[0])]
        if kind == "function":
            return [FunctionDef(node.name.word, self.nodes([node.body]), node.pos[0])]
        if kind in ("operator", "pipe", "reservedword"):
            return []
        return [Skipped(kind, node.pos[0])]

    def command(self, node) -> list[Statement]:
        words = [p for p in node.parts if p.kind in ("word", "assignment")]
        if len(words) == 1 and words[0].pos[0] in self.masked.arrays:
            return [self.masked.arrays[words[0].pos[0]]]
        if words and words[0].kind == "word" and len(words) == 2 and words[1].pos[0] in self.masked.arrays:
            return [self.masked.arrays[words[1].pos[0]]]  # export NAME=( ... )
        if not words:
            return []
        return [Simple([_word_at(self.text, *w.pos) for w in words], node.pos[0])]

    def branch(self, words: list, pos: int) -> Branch:
        """words: if COND then BODY [elif COND then BODY]* [else BODY] fi (reserved words as strings)."""
        cond_end = words.index("then")
        condition = [w for n in words[1:cond_end] for s in self.node(n) if isinstance(s, Simple) for w in s.words]
        rest = words[cond_end + 1:]
        stop = next((i for i, w in enumerate(rest) if w in ("elif", "else", "fi")), len(rest))
        then = self.nodes(rest[:stop])
        after = rest[stop:]
        if after and after[0] == "elif":
            otherwise: list[Statement] = [self.branch(["if", *after[1:]], pos)]
        elif after and after[0] == "else":
            otherwise = self.nodes([n for n in after[1:] if n != "fi"])
        else:
            otherwise = []
        return Branch(condition, then, otherwise, pos)


def read_structure(text: str) -> list[Statement]:
    """The script's statements in order; raises ShellError with a position for what bash would refuse."""
    try:
        masked = _mask(text)
        trees = bashlex.parse(masked.text) if masked.text.strip() else []
    except bashlex.errors.ParsingError as e:
        raise ShellError(e.position, f"the shell parser cannot read this ({e.message})") from None
    except NotImplementedError:
        raise ShellError(0, "the shell parser (bashlex) cannot read a construct of this script, such as a `case` "
                            "statement", fix="Set the values the main_ppo command uses outside it.") from None
    return _Walker(text, masked).nodes(trees)
