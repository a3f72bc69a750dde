"""The label-expression language used by filters."""

from __future__ import annotations

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
