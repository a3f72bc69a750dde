"""Opening a capture file (a path, stdin or a pipe, gzipped or not) and reading it in chunks."""

from __future__ import annotations

import gzip
import io
import os
import stat
import zlib

from otus.core.errors import CaptureError

__all__ = [
    "MAX_RECORD",
    "PCAPNG_SHB",
    "PCAP_MAGIC",
    "SNAP_CUT",
    "Corrupt",
    "Input",
    "Truncated",
    "open_capture",
    "read_more",
    "refill",
]

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1),
    b"\x4d\x3c\xb2\xa1": ("<", 1000),  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1000),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_GZIP = b"\x1f\x8b"
_CHUNK = 1 << 20
SNAP_CUT = "capture.snap_cut"  # frames captured shorter than they were on the wire
MAX_RECORD = 1 << 24  # a record larger than 16 MiB means a corrupt file, not a frame


class Corrupt(Exception):
    """The file breaks at a byte offset: what is there cannot be a record."""

    def __init__(self, off: int, what: str) -> None:
        super().__init__(f"at byte {off}: {what}")


class Truncated(Corrupt):
    """The file ends in the middle of a record: a capture cut while being written."""


class _Chain:
    """Bytes already read, then the rest of the file: what GzipFile decompresses."""

    def __init__(self, head: bytes, f: io.BufferedIOBase) -> None:
        self._head = head
        self._f = f

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes, the saved ones first."""
        head = self._head
        if not head:
            return self._f.read1(n)  # what a pipe holds now: GzipFile reads again for more
        if n < 0:
            self._head = b""
            return head + self._f.read()
        self._head = head[n:]
        return head[:n]

    def seek(self, _off: int, /) -> int:
        """GzipFile seeks only to rewind, which a capture never does."""
        raise io.UnsupportedOperation("seek")


class Input:
    """An open capture: the reader, its first four bytes, whether it can be read only once."""

    __slots__ = ("_raw", "f", "head", "stream")

    def __init__(self, raw: io.BufferedIOBase, head: bytes, stream: bool) -> None:
        self._raw = raw
        self.f = raw
        self.head = head
        self.stream = stream

    def close(self) -> None:
        """Close the reader and the file under it (again is a no-op)."""
        try:
            self.f.close()
        finally:
            self._raw.close()


def open_capture(path: str) -> Input:
    """Open a capture (``-`` is stdin) and check its magic, through gzip if it is compressed."""
    try:
        if path == "-":
            if os.isatty(0):
                raise CaptureError("-: standard input is a terminal, not a capture file")
            raw: io.BufferedIOBase = os.fdopen(os.dup(0), "rb")
        else:
            raw = open(path, "rb")  # noqa: SIM115 - Input.close closes it
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise CaptureError(f"cannot open capture file {path!r}: {why}") from None
    try:
        # A pipe, FIFO or stdin: its bytes are gone once read, and it blocks until written.
        stream = path == "-" or not stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
        head = raw.read(4)
        inp = Input(raw, head, stream)
        if head[:2] == _GZIP:  # tshark reads gzipped captures as they are: so do we
            inp.f = gzip.GzipFile(fileobj=_Chain(head, raw), mode="rb")
            inp.head = head = inp.f.read(4)
    except (OSError, EOFError, zlib.error) as e:
        raw.close()
        raise CaptureError(f"cannot read capture file {path!r}: {e}") from None
    if head not in PCAP_MAGIC and head != PCAPNG_SHB:
        inp.close()
        what = f"is not a pcap or pcapng file (it starts with {head.hex()})" if head else "is empty"
        raise CaptureError(f"{path!r} {what}")
    return inp


def read_more(inp: Input, pos: int, need: int) -> bytes:
    """The next bytes of the input, at least ``need`` unless it ends first (b"" at its end)."""
    try:
        chunk = inp.f.read1(max(need, _CHUNK))  # what is there now: a pipe is read as written
        if 0 < len(chunk) < need:
            chunk += inp.f.read(need - len(chunk))  # one read for the rest of a large record
    except EOFError:  # gzip: the compressed data stops before its end marker
        raise Truncated(pos, "the compressed data ends early") from None
    except (OSError, zlib.error) as e:
        raise Corrupt(pos, f"cannot read: {e}") from None
    return chunk


def refill(inp: Input, buf: bytes, off: int, base: int, need: int) -> tuple[bytes, int] | None:
    """``buf[off:]`` and at least ``need`` more bytes, and its file offset; None at the end."""
    chunk = read_more(inp, base + off, need)
    if not chunk:
        return None
    return buf[off:] + chunk, base + off
