"""Interface names Linux cannot have are refused before anything opens a socket."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from otus.plugins.capture.afpacket.config import AfpacketConfig, check_ifname


@pytest.mark.parametrize("name", ["lo", "eth0", "any", "a" * 15, "br-1.100", "veth_x@y"])
def test_valid_names_pass(name: str) -> None:
    assert check_ifname(name) == name
    assert AfpacketConfig(interfaces=[name]).interfaces == [name]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("lo\0x", "has a NUL, '/' or whitespace"),
        ("é" * 8, "is not 1 to 15 bytes long"),  # 8 characters, 16 bytes
        ("a" * 16, "is not 1 to 15 bytes long"),
        ("", "is not 1 to 15 bytes long"),
        ("a/b", "has a NUL, '/' or whitespace"),
        ("lo x", "has a NUL, '/' or whitespace"),
        ("lo\t", "has a NUL, '/' or whitespace"),
    ],
)
def test_impossible_names_are_refused(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_ifname(name)
    with pytest.raises(ValidationError):
        AfpacketConfig(interfaces=[name])
