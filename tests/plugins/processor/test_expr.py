"""The label-expression language used by filters."""

from __future__ import annotations

import time

import pytest

from otus.plugins.processor.expr import ExprError, compile_expr

INVITE = {"sip.method": "INVITE", "sip.call_id": "abc", "k8s.src_pod": "pbx-0"}
OK_503 = {"sip.status_code": "503", "sip.cseq_method": "INVITE"}


@pytest.mark.parametrize(
    ("expr", "labels", "want"),
    [
        ("sip.method == 'INVITE'", INVITE, True),
        ("sip.method == 'OPTIONS'", INVITE, False),
        ("sip.method != 'OPTIONS'", INVITE, True),
        ("sip.status_code =~ '^5'", OK_503, True),
        ("sip.status_code !~ '^5'", OK_503, False),
        ("sip.method in ['OPTIONS', 'INVITE']", INVITE, True),
        ("sip.method in ['OPTIONS']", OK_503, False),
        ("k8s.src_pod", INVITE, True),
        ("not k8s.src_pod", OK_503, True),
        ("sip.method == 'INVITE' and (k8s.src_pod == 'x' or sip.call_id == \"abc\")", INVITE, True),
        ("sip.method == 'BYE' or sip.status_code == '503'", OK_503, True),
        ("not (sip.method == 'INVITE')", INVITE, False),
    ],
)
def test_expressions(expr: str, labels: dict[str, str], want: bool) -> None:
    assert compile_expr(expr)(labels) is want


@pytest.mark.parametrize(
    ("expr", "msg"),
    [
        ("", "empty"),
        ("sip.method ==", "expected a quoted value"),
        ("sip.method == 'x' and", "expected a label name"),
        ("(sip.method == 'x'", r"expected \)"),
        ("sip.method = 'x'", "unexpected character"),
        ("sip.method =~ '('", "bad regular expression"),
        ("a b", "after a complete expression"),
    ],
)
def test_errors_are_readable(expr: str, msg: str) -> None:
    with pytest.raises(ExprError, match=msg):
        compile_expr(expr)


@pytest.mark.parametrize(
    ("expr", "labels", "want"),
    [
        # Backslashes other than before a quote or a backslash are the regex's own.
        (r"sip.status_code =~ '^\d{3}$'", OK_503, True),
        (r"sip.call_id =~ '^a\.c$'", {"sip.call_id": "abc"}, False),
        (r"sip.call_id =~ '^a\.c$'", {"sip.call_id": "a.c"}, True),
        (r"sip.call_id == 'it\'s'", {"sip.call_id": "it's"}, True),
        (r'sip.call_id == "say \"hi\""', {"sip.call_id": 'say "hi"'}, True),
        (r"sip.call_id == 'a\\b'", {"sip.call_id": "a\\b"}, True),
        (r"sip.call_id =~ 'a\\\\b'", {"sip.call_id": "a\\b"}, True),
    ],
)
def test_escapes_keep_regexes_as_written(expr: str, labels: dict[str, str], want: bool) -> None:
    assert compile_expr(expr)(labels) is want


@pytest.mark.parametrize(
    "expr",
    ["not " * 1000 + "a", "(" * 1000 + "a" + ")" * 1000, "not (" * 33 + "a" + ")" * 33],
    ids=["not", "parens", "mixed"],
)
def test_deep_nesting_is_refused_not_a_crash(expr: str) -> None:
    """4096 characters of nesting overflowed the parser's stack (RecursionError, a traceback)."""
    with pytest.raises(ExprError, match="nested more than 32 levels deep"):
        compile_expr(expr)


def test_deeply_nested_regex_is_refused_not_a_crash() -> None:
    with pytest.raises(ExprError, match=r"bad regular expression .*: nested too deeply"):
        compile_expr("sip.call_id =~ '" + "(" * 1000 + "a" + ")" * 1000 + "'")


def test_nesting_up_to_the_bound_works() -> None:
    assert compile_expr("not (" * 16 + "a" + ")" * 16)({}) is False  # 32 levels, even nots


@pytest.mark.parametrize(
    "regex",
    [
        r"(a+)+$",
        r"(\w+\s?)*$",
        r"(x|y+)*z",
        r"(?:(?:a)*)*",
        r"(a+){1,100}",
        r"(a*)*b",
        r"(.+\.)+$",  # the delimiter is also a character of the repeat
        r"([a-z]+[a-z]+\.)+$",  # two repeats share each stretch
        r"((a+)+\.)*",
        r"(a+){1,10}",  # not exponential, but n**10
        r"(a+){3}",
        r"(\d{1,3})+",  # bounded inside unbounded: every split of a digit string
    ],
)
def test_exponential_regexes_are_refused(regex: str) -> None:
    """``(a+)+$`` on 40 characters of 'a' and a 'b' never returns: refused when compiled."""
    with pytest.raises(ExprError, match=r"exponential time.*possessive"):
        compile_expr(f"sip.call_id =~ '{regex}'")


@pytest.mark.parametrize(
    "regex",
    [
        r"(a++)+$",
        r"(?>a+)+$",
        r"(\d{1,3}\.){3}\d{1,3}",
        r"^sip:.*@",
        r"(ab)+",
        r"(\d+\.){3}\d+",
        # Each iteration ends at a character its repeat cannot take: one way to split.
        r"^(?:[a-z0-9-]+\.)*example\.com$",
        r"(\d+\.)+\d+",
        r"([^@]+@)+",
    ],
)
def test_safe_regexes_are_accepted(regex: str) -> None:
    compile_expr(f"sip.call_id =~ '{regex}'")
    # And they are: a hostile 20,000-character value that never matches, in well under a second.
    start = time.monotonic()
    compile_expr(f"sip.call_id =~ '^{regex}$'")({"sip.call_id": "a" * 20_000 + "!"})
    assert time.monotonic() - start < 1.0


def test_possessive_form_matches_long_hostile_values_quickly() -> None:
    pred = compile_expr("sip.call_id =~ '(a++)+$'")
    assert pred({"sip.call_id": "a" * 100_000 + "b"}) is False
