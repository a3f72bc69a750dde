"""``--agent-selector``: the label selector syntax of the Kubernetes documentation."""

from __future__ import annotations

import pytest
from otus_operator.selector import parse_selector

PROD = {"environment": "production", "tier": "frontend", "partition": "a"}
QA = {"environment": "qa", "tier": "backend"}
BARE: dict[str, str] = {}


# The examples of https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/
@pytest.mark.parametrize(
    ("selector", "selected"),
    [
        ("", ["prod", "qa", "bare"]),
        ("environment = production", ["prod"]),
        ("environment==production", ["prod"]),
        ("tier != frontend", ["qa", "bare"]),  # also objects without the label
        ("environment=production,tier!=frontend", []),
        ("environment=qa, tier!=frontend", ["qa"]),
        ("environment in (production, qa)", ["prod", "qa"]),
        ("tier notin (frontend, backend)", ["bare"]),
        ("partition", ["prod"]),
        ("!partition", ["qa", "bare"]),
        ("environment,environment notin (frontend)", ["prod", "qa"]),
        ("partition in (customerA, a),!other", ["prod"]),
        ("tier=", []),  # the label with an empty value
        ("tier in ()", []),  # the same, as the API server reads it
    ],
)
def test_documented_selectors_match_as_on_the_api_server(
    selector: str, selected: list[str]
) -> None:
    sel = parse_selector(selector)
    objects = {"prod": PROD, "qa": QA, "bare": BARE}
    assert [name for name, labels in objects.items() if sel.matches(labels)] == selected


def test_empty_values_are_values() -> None:
    assert parse_selector("tier=").matches({"tier": ""})
    assert parse_selector("tier in (a,)").matches({"tier": ""})
    assert not parse_selector("tier notin (a,)").matches({"tier": ""})


@pytest.mark.parametrize(
    ("selector", "error"),
    [
        ("a b", "found 'b' after 'a', expected =, ==, !=, in or notin"),
        ("a=b,", "found the end after ',', expected a label key"),
        ("=b", "found '=', expected a label key"),
        ("a=b=c", "found '=', expected ',' or the end"),
        ("!a=b", "found '=' after '!a', expected ',' or the end"),
        ("a in b", "found 'b', expected '('"),
        ("a in (b", "found the end, expected a value, ',' or ')'"),
        ("a in (b c)", "found 'c', expected a value, ',' or ')'"),
        ("a > 1", "'a>': numeric comparisons are not label selectors"),
        ("a ~ b", "found '~' after 'a', expected =, ==, !=, in or notin"),
        ("-a=b", "'-a' is not a valid label key"),
        ("a=b c", "found 'c', expected ',' or the end"),
        ("a=-b", "'-b' is not a valid label value"),
    ],
)
def test_malformed_selectors_say_what_is_wrong(selector: str, error: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_selector(selector)
    assert str(e.value) == error
