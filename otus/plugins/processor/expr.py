"""A small label-expression language for filters, compiled once into a Python closure.

Grammar (keywords and operators are case-sensitive, values are quoted)::

    expr    := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | atom
    atom    := "(" expr ")" | LABEL OP VALUE | LABEL "in" "[" VALUE ("," VALUE)* "]" | LABEL
    OP      := "==" | "!=" | "=~" | "!~"       (=~ is a regex search)
    LABEL   := [A-Za-z_][A-Za-z0-9_.-]*       (a bare LABEL tests that the label is set)
    VALUE   := 'text' | "text"

Example: ``sip.method == 'OPTIONS' or (sip.status_code =~ '^5' and not k8s.src_pod)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

__all__ = ["ExprError", "Predicate", "compile_expr"]

Predicate = Callable[[Mapping[str, str]], bool]

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
    r"""|(?P<op>==|!=|=~|!~|\(|\)|\[|\]|,)"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_.\-]*))"""
)
_KEYWORDS = {"and", "or", "not", "in"}
_MAX_LEN = 4096


class ExprError(ValueError):
    """The expression does not follow the grammar."""


def _tokenize(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExprError(f"unexpected character at position {pos}: {text[pos : pos + 10]!r}")
        kind = m.lastgroup or ""
        val = m.group(kind)
        if kind == "str":
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        elif kind == "word" and val in _KEYWORDS:
            kind = "kw"
        out.append((kind, val))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.t[self.i] if self.i < len(self.t) else ("end", "")

    def take(self, kind: str, val: str | None = None) -> str:
        k, v = self.peek()
        if k != kind or (val is not None and v != val):
            want = val or {"str": "a quoted value", "word": "a label name"}.get(kind, kind)
            got = v or "end of expression"
            raise ExprError(f"expected {want}, found {got!r}")
        self.i += 1
        return v

    def expr(self) -> Predicate:
        parts = [self.and_()]
        while self.peek() == ("kw", "or"):
            self.i += 1
            parts.append(self.and_())
        if len(parts) == 1:
            return parts[0]
        return lambda labels: any(p(labels) for p in parts)

    def and_(self) -> Predicate:
        parts = [self.not_()]
        while self.peek() == ("kw", "and"):
            self.i += 1
            parts.append(self.not_())
        if len(parts) == 1:
            return parts[0]
        return lambda labels: all(p(labels) for p in parts)

    def not_(self) -> Predicate:
        if self.peek() == ("kw", "not"):
            self.i += 1
            inner = self.not_()
            return lambda labels: not inner(labels)
        return self.atom()

    def atom(self) -> Predicate:
        if self.peek() == ("op", "("):
            self.i += 1
            inner = self.expr()
            self.take("op", ")")
            return inner
        name = self.take("word")
        k, v = self.peek()
        if k == "op" and v in ("==", "!=", "=~", "!~"):
            self.i += 1
            value = self.take("str")
            return _compare(name, v, value)
        if (k, v) == ("kw", "in"):
            self.i += 1
            self.take("op", "[")
            values = {self.take("str")}
            while self.peek() == ("op", ","):
                self.i += 1
                values.add(self.take("str"))
            self.take("op", "]")
            frozen = frozenset(values)
            return lambda labels: labels.get(name) in frozen
        return lambda labels: bool(labels.get(name))


def _compare(name: str, op: str, value: str) -> Predicate:
    if op == "==":
        return lambda labels: labels.get(name) == value
    if op == "!=":
        return lambda labels: labels.get(name) != value
    try:
        rx = re.compile(value)
    except re.error as e:
        raise ExprError(f"bad regular expression {value!r}: {e}") from None
    search = rx.search
    if op == "=~":
        return lambda labels: (v := labels.get(name)) is not None and search(v) is not None
    return lambda labels: (v := labels.get(name)) is None or search(v) is None


def compile_expr(text: str) -> Predicate:
    """Compile an expression; raise ExprError with a readable message if it is invalid."""
    if len(text) > _MAX_LEN:
        raise ExprError(f"expression longer than {_MAX_LEN} characters")
    tokens = _tokenize(text)
    if not tokens:
        raise ExprError("empty expression")
    p = _Parser(tokens)
    pred = p.expr()
    if p.i != len(tokens):
        raise ExprError(f"unexpected {p.peek()[1]!r} after a complete expression")
    return pred
