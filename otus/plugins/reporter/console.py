"""Console reporter: records as JSON lines or readable text, on stdout, stderr or a file."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Any, Literal

import orjson
from pydantic import Field

from otus.core.errors import ReporterError
from otus.core.model import SpecModel
from otus.core.packet import IPPROTO_TCP, OutputPacket
from otus.core.record import format_ts, to_record
from otus.plugins.base import PluginContext

__all__ = ["ConsoleConfig", "ConsoleReporter", "format_text"]

log = logging.getLogger(__name__)

# Header values come off the wire: ESC, CSI (U+009B) and friends would drive the reader's
# terminal, newlines would forge lines, and bidi controls would reorder what the line shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")
# orjson escapes C0 but writes C1 as UTF-8; xterm and others obey U+009B as CSI even so.
_C1_UTF8 = re.compile(b"\xc2[\x80-\x9f]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def _escape_c1(m: re.Match[bytes]) -> bytes:
    return b"\\u00%02x" % m.group()[1]


class ConsoleConfig(SpecModel):
    """Where and how to print records."""

    format: Literal["json", "text"] = Field(default="json", description="JSON lines or text.")
    stream: Literal["stdout", "stderr"] = "stdout"
    path: str | None = Field(
        default=None, max_length=4096, description="Append to this file instead of a stream."
    )


def _party(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return str(d.get("uri") or "-")


def format_text(out: OutputPacket) -> str:
    """One readable line per message; control characters are shown escaped (``\\x1b``)."""
    p = out.payload
    proto = "tcp" if out.transport == IPPROTO_TCP else "udp"
    if p.get("method"):
        what = f"{p['method']} {p.get('request_uri') or ''}".rstrip()
    else:
        cseq = p.get("cseq") or {}
        what = f"{p.get('status_code')} {p.get('reason') or ''}".rstrip()
        if cseq.get("method"):
            what += f" ({cseq['method']})"
    src = f"[{out.src_ip}]" if ":" in out.src_ip else out.src_ip
    dst = f"[{out.dst_ip}]" if ":" in out.dst_ip else out.dst_ip
    line = (
        f"{format_ts(out.ts_us)} {proto} {src}:{out.src_port} -> {dst}:{out.dst_port} "
        f"{what} call-id={p.get('call_id')} from={_party(p.get('from'))} to={_party(p.get('to'))}"
    )
    enc = out.encap
    if enc is not None:
        tags = [f"vlan={','.join(map(str, enc.vlans))}"] if enc.vlans else []
        tags += [t.type + (f":{t.id}" if t.id is not None else "") for t in enc.tunnels]
        line += " [" + " ".join(tags) + "]"
    return _UNSAFE.sub(_escape, line)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte, resuming after partial writes."""
    # Not io.BufferedWriter: on CPython 3.11 a signal that interrupts a large blocking write to
    # a pipe (SIGTERM while the reader is slow) can lose the unwritten rest of the data.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ConsoleReporter:
    """Writes each batch as it comes; a full pipe blocks (that is the backpressure)."""

    Config = ConsoleConfig

    def __init__(self, config: ConsoleConfig, ctx: PluginContext) -> None:
        self._text = config.format == "text"
        self._task, self._agent = ctx.task_id, ctx.agent_id
        self._lock = ctx.output_lock  # shared by fanout workers writing the same stream
        self._own: int | None = None
        if config.path:
            try:
                self._own = os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as e:
                raise ReporterError(f"cannot open {config.path!r}: {e.strerror}") from None
            self._fd = self._own
        else:
            stream = sys.stdout if config.stream == "stdout" else sys.stderr
            if stream is None:  # Python found the descriptor closed at startup
                raise ReporterError(f"{config.stream} is closed: records have nowhere to go")
            stream.flush()  # whatever Python buffered goes first
            self._fd = stream.fileno()
        self._written = 0
        self._failed = 0
        self.reader_gone = False  # the pipeline stops once no reporter has anyone to write to

    async def report(self, batch: list[OutputPacket]) -> None:
        """Write the batch whole: one write(2) unless the reader is slower than us."""
        if not batch:
            return
        if self._text:
            data = ("\n".join(map(format_text, batch)) + "\n").encode("utf-8", "replace")
        else:
            task, agent = self._task, self._agent
            dumps, opt = orjson.dumps, orjson.OPT_APPEND_NEWLINE
            data = b"".join([dumps(to_record(o, task, agent), option=opt) for o in batch])
            data = _C1_UTF8.sub(_escape_c1, data)  # the same JSON text, terminal-safe
        try:
            if self._lock is None:
                _write_all(self._fd, data)
            else:
                with self._lock:  # whole batches: a pipe is atomic only up to PIPE_BUF bytes
                    _write_all(self._fd, data)
            self._written += len(batch)
        except OSError as e:
            # The reader went away (`otus run ... | head`) or the disk is full: count, don't
            # crash; say why once (a broken pipe is the reader's choice, not worth a line).
            if not self._failed and not isinstance(e, BrokenPipeError):
                log.error("console: cannot write records: %s", e)
            self._failed += len(batch)
            # A closed pipe stays closed: `otus run -i eth0 | head -1` should end, as tcpdump
            # does, rather than capture on for nobody. A full disk may recover.
            self.reader_gone = isinstance(e, BrokenPipeError)

    async def flush(self) -> None:
        """Records are written unbuffered; make a file's data durable."""
        if self._own is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._own)

    async def close(self) -> None:
        """Flush and close an owned file."""
        await self.flush()
        if self._own is not None:
            os.close(self._own)
            self._own = None

    def stats(self) -> dict[str, int]:
        """``report.console.written`` and ``report.drop.console_failed``."""
        return {"report.console.written": self._written, "report.drop.console_failed": self._failed}
