"""The framer's header-end search agrees with the regex it replaced, on bytes and bytearray."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from otus.plugins.parser.sip.framing import _mixed_end

_HDR_END = re.compile(rb"\r?\n\r?\n")


@given(st.binary().map(lambda b: bytes(b"\r\na:"[x % 4] for x in b)), st.integers(0, 8))
def test_mixed_end_is_the_first_blank_line_with_any_line_ends(data: bytes, start: int) -> None:
    m = _HDR_END.search(data, start)
    want = m.span() if m is not None else (-1, -1)
    assert _mixed_end(data, start) == want
    assert _mixed_end(bytearray(data), start) == want
