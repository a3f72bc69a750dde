"""Label selector strings (``--agent-selector``), parsed and matched as the API server does.

The syntax of ``k8s.io/apimachinery/pkg/labels.Parse`` (whitespace between tokens is ignored)::

    selector    := "" | requirement ("," requirement)*
    requirement := key | "!" key | key ("=" | "==" | "!=") [value]
                 | key ("in" | "notin") "(" [value] ("," [value])* ")"

``k=v`` and ``k==v`` need the label with that value (``k=`` the empty value); ``k!=v`` and
``k notin (a,b)`` also match objects without the label; ``k`` needs the label, ``!k`` its
absence. The numeric ``<`` and ``>`` of node affinity are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from otus.control.kubernetes.model import LabelSelectorRequirement

__all__ = ["Selector", "parse_selector"]

_TOKEN = re.compile(r"\s*(?:(!=|==|[=!(),<>])|([^\s=!(),<>]+))")
_END = ("end", "")


@dataclass(frozen=True)
class Selector:
    """A parsed label selector: every requirement must hold."""

    text: str
    requirements: tuple[LabelSelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with these labels is selected."""
        return all(r.matches(labels) for r in self.requirements)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while text[pos:].strip():
        m = _TOKEN.match(text, pos)
        assert m is not None  # every character is whitespace, a symbol or part of a word
        out.append(("sym", m[1]) if m[1] else ("word", m[2]))
        pos = m.end()
    return [*out, _END]


def _shown(token: tuple[str, str]) -> str:
    return repr(token[1]) if token != _END else "the end"


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos]

    def take(self) -> tuple[str, str]:
        tok = self.tokens[self.pos]
        if tok != _END:
            self.pos += 1
        return tok

    def selector(self) -> list[tuple[str, str, list[str]]]:
        out: list[tuple[str, str, list[str]]] = []
        if self.peek() == _END:
            return out
        while True:
            out.append(self.requirement())
            tok = self.take()
            if tok == _END:
                return out
            if tok != ("sym", ","):
                raise ValueError(f"found {_shown(tok)}, expected ',' or the end")
            if self.peek()[0] != "word" and self.peek() != ("sym", "!"):
                raise ValueError(f"found {_shown(self.peek())} after ',', expected a label key")

    def requirement(self) -> tuple[str, str, list[str]]:
        tok = self.take()
        negated = tok == ("sym", "!")
        if negated:
            tok = self.take()
        if tok[0] != "word":
            raise ValueError(f"found {_shown(tok)}, expected a label key")
        key = tok[1]
        if self.peek() in (_END, ("sym", ",")):
            return (key, "DoesNotExist" if negated else "Exists", [])
        if negated:
            raise ValueError(f"found {_shown(self.peek())} after '!{key}', expected ',' or the end")
        kind, op = self.take()
        if kind == "word" and op in ("in", "notin"):
            return (key, "In" if op == "in" else "NotIn", self.values())
        if kind == "sym" and op in ("=", "==", "!="):
            return (key, "NotIn" if op == "!=" else "In", [self.value()])
        if op in ("<", ">"):
            raise ValueError(f"'{key}{op}': numeric comparisons are not label selectors")
        raise ValueError(f"found {op!r} after {key!r}, expected =, ==, !=, in or notin")

    def value(self) -> str:
        if self.peek() in (_END, ("sym", ",")):
            return ""  # `k=`: the label with an empty value
        tok = self.take()
        if tok[0] != "word":
            raise ValueError(f"found {_shown(tok)}, expected a value")
        return tok[1]

    def values(self) -> list[str]:
        tok = self.take()
        if tok != ("sym", "("):
            raise ValueError(f"found {_shown(tok)}, expected '('")
        out: list[str] = []
        current: str | None = None
        while True:  # an empty item is the empty value, as in `in (a,)` or `in ()`
            tok = self.take()
            if tok[0] == "word" and current is None:
                current = tok[1]
            elif tok in (("sym", ","), ("sym", ")")):
                out.append(current or "")
                current = None
                if tok[1] == ")":
                    return list(dict.fromkeys(out))
            else:
                raise ValueError(f"found {_shown(tok)}, expected a value, ',' or ')'")


def parse_selector(text: str) -> Selector:
    """Parse a label selector; raise ValueError saying what is wrong, in one line."""
    requirements = []
    for key, op, values in _Parser(text).selector():
        try:
            req = LabelSelectorRequirement.model_validate(
                {"key": key, "operator": op, "values": values}
            )
        except ValidationError as e:
            loc = e.errors()[0]["loc"]
            if loc[:1] == ("key",):
                raise ValueError(f"{key!r} is not a valid label key") from None
            if loc[:1] == ("values",) and len(loc) > 1 and isinstance(loc[1], int):
                raise ValueError(f"{values[loc[1]]!r} is not a valid label value") from None
            raise ValueError(f"{key}: {e.errors()[0]['msg']}") from None
        requirements.append(req)
    return Selector(text, tuple(requirements))
