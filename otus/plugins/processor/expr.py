"""A small label-expression language for filters, compiled once into a Python closure.

Grammar (keywords and operators are case-sensitive, values are quoted)::

    expr    := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | atom
    atom    := "(" expr ")" | LABEL OP VALUE | LABEL "in" "[" VALUE ("," VALUE)* "]" | LABEL
    OP      := "==" | "!=" | "=~" | "!~"       (=~ is a regex search)
    LABEL   := [A-Za-z_][A-Za-z0-9_.-]*       (a bare LABEL tests that the label is set)
    VALUE   := 'text' | "text"      (\\', \\" and \\\\ are escapes; other backslashes stay, so
                                     '^\\d+$' is the regex it reads as)

Parentheses and ``not`` nest at most 32 deep. A regex that repeats a variable-length repeat
(``(a+)+``, ``(\\w+\\s?)*``, ``(a+){3}``) is refused: it can backtrack exponentially (or as
n**3 and worse) on a long label value, stalling the pipeline; make the inner repeat possessive
(``a++``) or atomic (``(?>a+)``). Allowed: iterations that end at a character their one repeat
cannot take (``(?:[a-z0-9-]+\\.)*``). Not bounded: the quadratic cost of any search for a
pattern such as ``x.*y`` over a value of tens of kilobytes.

Example: ``sip.method == 'OPTIONS' or (sip.status_code =~ '^5' and not k8s.src_pod)``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ExprError", "Predicate", "compile_expr"]

Predicate = Callable[[Mapping[str, str]], bool]

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
    r"""|(?P<op>==|!=|=~|!~|\(|\)|\[|\]|,)"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_.\-]*))"""
)
_KEYWORDS = {"and", "or", "not", "in"}
_MAX_LEN = 4096
_MAX_DEPTH = 32  # the parser recurses per level: 4096 characters of "(" would overflow the stack
_ESCAPE = re.compile(r"""\\([\\'"])""")
# The regex parser behind re.compile, to see a pattern's structure (no typeshed stubs).
_sre: Any = importlib.import_module("re._parser")
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT"}
_MANY = 16  # a repeat of more iterations than this counts as unbounded
_CATEGORIES = {
    f"CATEGORY_{neg}{kind.upper()}": re.compile(f"\\{letter.upper() if neg else letter}")
    for kind, letter in (("digit", "d"), ("space", "s"), ("word", "w"))
    for neg in ("", "NOT_")
}


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
            val = _ESCAPE.sub(r"\1", val[1:-1])
        elif kind == "word" and val in _KEYWORDS:
            kind = "kw"
        out.append((kind, val))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.t = tokens
        self.i = 0
        self.depth = 0

    def nest(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ExprError(f"nested more than {_MAX_DEPTH} levels deep")

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
            self.nest()
            inner = self.not_()
            self.depth -= 1
            return lambda labels: not inner(labels)
        return self.atom()

    def atom(self) -> Predicate:
        if self.peek() == ("op", "("):
            self.i += 1
            self.nest()
            inner = self.expr()
            self.take("op", ")")
            self.depth -= 1
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
        backtracks = _nested_repeat(_sre.parse(value), 1)
    except re.error as e:
        raise ExprError(f"bad regular expression {value!r}: {e}") from None
    except RecursionError:  # re's parser recurses per group: a few hundred overflow it
        raise ExprError(f"bad regular expression {value!r}: nested too deeply") from None
    if backtracks:
        raise ExprError(
            f"regular expression {value!r} repeats a variable-length repeat, which can take "
            "exponential time (or n**3 and worse) on a long value: make the inner repeat "
            "possessive (a++) or atomic ((?>a+))"
        )
    search = rx.search
    if op == "=~":
        return lambda labels: (v := labels.get(name)) is not None and search(v) is not None
    return lambda labels: (v := labels.get(name)) is None or search(v) is None


def _nested_repeat(items: Any, around: int) -> bool:
    """Whether a variable-length repeat sits inside repeats allowing ``around`` iterations."""
    # n characters split among k iterations: about n**k ways to try before failing. Exponential
    # when k is large; polynomial of degree k when it is small, still hopeless from k = 3 on.
    for op, av in items:
        name = str(op)
        if name in _REPEATS:
            lo, hi, sub = av
            unbounded = hi == _sre.MAXREPEAT or hi > _MANY
            if lo != hi and (around > _MANY or (around > 2 and unbounded)):
                return True
            if _delimited(sub):
                continue  # `(?:[a-z0-9-]+\.)*`: where one iteration ends is never in doubt
            inner = [(sub, min(around * hi, _sre.MAXREPEAT))]
        elif name in ("SUBPATTERN", "ASSERT", "ASSERT_NOT"):
            inner = [(av[-1], around)]
        elif name == "BRANCH":
            inner = [(alt, around) for alt in av[1]]
        elif name == "GROUPREF_EXISTS":
            inner = [(alt, around) for alt in av[1:] if alt is not None]
        else:  # POSSESSIVE_REPEAT and ATOMIC_GROUP never backtrack into their content
            continue
        if any(_nested_repeat(sub, n) for sub, n in inner):
            return True
    return False


def _delimited(body: Any) -> bool:
    """Whether ``body`` is single characters, one repeated, ending at a literal none can take."""
    while len(body) == 1 and str(body[0][0]) == "SUBPATTERN":
        body = body[0][1][-1]
    if not body or str(body[-1][0]) != "LITERAL":
        return False
    end = chr(body[-1][1])
    variable = 0  # two side by side ([a-z]+[a-z]+) split one stretch many ways: cubic
    for item in list(body)[:-1]:
        if str(item[0]) in _REPEATS or str(item[0]) == "POSSESSIVE_REPEAT":
            lo, hi, sub = item[1]
            if len(sub) != 1:
                return False
            variable += lo != hi
            item = sub[0]  # noqa: PLW2901 - the repeated character is what is checked
        if _may_match(str(item[0]), item[1], end):
            return False
    return variable <= 1


def _may_match(name: str, av: Any, ch: str) -> bool:
    """Whether one single-character item can match ``ch``, in either case; True when unsure."""
    chars = {ch, ch.lower(), ch.upper()}
    if name == "LITERAL":
        return chr(av) in chars
    if name == "NOT_LITERAL":
        return chars != {chr(av)}
    if name != "IN":
        return True  # ANY, or not a single-character item at all
    negate = False
    for op, arg in av:
        kind = str(op)
        if kind == "NEGATE":
            negate = True
        elif not (kind in ("LITERAL", "RANGE") or (kind == "CATEGORY" and str(arg) in _CATEGORIES)):
            return True
    return any(_in_set(av, c) != negate for c in chars)


def _in_set(av: Any, c: str) -> bool:
    """Whether ``c`` is one of a character set's literals, ranges or categories."""
    for op, arg in av:
        kind = str(op)
        if (
            (kind == "LITERAL" and ord(c) == arg)
            or (kind == "RANGE" and arg[0] <= ord(c) <= arg[1])
            or (kind == "CATEGORY" and _CATEGORIES[str(arg)].fullmatch(c) is not None)
        ):
            return True
    return False


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
