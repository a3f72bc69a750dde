"""The Kafka reporter's settings, Kafka's key partitioning, and the checks run at construction."""

from __future__ import annotations

import ipaddress
import re
import ssl
import struct
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from otus.core.errors import ReporterError
from otus.core.model import SpecModel

__all__ = [
    "CODECS",
    "KafkaConfig",
    "check_broker",
    "check_codec",
    "murmur2",
    "partition_for",
    "read_password",
    "ssl_context",
]

_TOPIC = r"^[A-Za-z0-9._-]+$"


def _check_topic(name: str) -> str:
    """Refuse the names Kafka's pattern admits but its rules forbid."""
    if name in (".", ".."):
        # aiokafka would log "not a valid topic name" ten times a second, forever.
        raise ValueError(f"topic {name!r}: Kafka forbids the topic names '.' and '..'")
    return name


TopicName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=249, pattern=_TOPIC),
    AfterValidator(_check_topic),
]
TopicPrefix = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_TOPIC)]
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def check_broker(address: str) -> str:
    """``address`` if aiokafka can dial it, else ValueError saying what is wrong.

    The forms aiokafka takes: ``host:port``, ``host`` (port 9092), ``[v6]:port``, ``[v6]`` and a
    bare IPv6 literal (both port 9092). Checked here because aiokafka takes anything and then
    retries an address it can never reach (``h:abc``, ``h:0``) until the task is stopped.
    """
    if address.startswith("["):
        inner, sep, rest = address[1:].partition("]")
        if not sep:
            raise ValueError(f"broker {address!r}: ']' missing after the IPv6 address")
        _check_ipv6(address, inner)
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"broker {address!r}: write [IPv6]:port")
            _check_port(address, rest[1:])
        return address
    if address.count(":") > 1:
        _check_ipv6(address, address)  # bare, without a port: what aiokafka accepts
        return address
    host, sep, port = address.partition(":")
    if not host:
        raise ValueError(f"broker {address!r}: the host is missing (write host:port)")
    if not _HOSTNAME.match(host):
        raise ValueError(f"broker {address!r}: write host:port (host: a name or an IP address)")
    if sep:
        _check_port(address, port)
    return address


def _check_ipv6(address: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(
            f"broker {address!r}: not an IPv6 address (write [::1]:9092 or host:port)"
        ) from None


def _check_port(address: str, port: str) -> None:
    if not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"broker {address!r}: the port must be a number from 1 to 65535")


# The schema keeps the plain pattern (the CRD is generated from it); the checker does the rest.
BrokerAddress = Annotated[
    str,
    StringConstraints(min_length=1, max_length=261, pattern=r"^\S+$"),
    AfterValidator(check_broker),
]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=255)]

# Kafka's record-batch codec ids (the wire protocol's attribute bits).
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


class KafkaConfig(SpecModel):
    """Settings of the ``kafka`` reporter (every field bounded: the CRD schema comes from here)."""

    brokers: list[BrokerAddress] = Field(
        min_length=1, max_length=100, description="Bootstrap brokers, host:port."
    )
    topic: TopicName | None = Field(default=None, description="One topic for every record.")
    topic_prefix: TopicPrefix | None = Field(
        default=None, description="Or a topic per payload type: <prefix>-<payload_type>."
    )
    client_id: Name | None = Field(default=None, description="Default otus-<agent>-<task>.")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    acks: Literal["0", "1", "all"] = "all"
    enable_idempotence: bool | None = Field(
        default=None, description="Default: on when acks is 'all' and the broker supports it."
    )
    batch_size: int = Field(
        default=262_144, ge=1024, le=16 * 1024 * 1024, description="Bytes per partition batch."
    )
    linger_ms: int = Field(
        default=5, ge=0, le=60_000, description="How long a lone record waits for company."
    )
    max_request_size: int = Field(
        default=1_048_576, ge=1024, le=64 * 1024 * 1024, description="Larger records are dropped."
    )
    buffer_max_records: int = Field(
        default=50_000, ge=1, le=10_000_000, description="Records accepted and not yet delivered."
    )
    buffer_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        le=16 * 1024 * 1024 * 1024,
        description="Bytes (record values and keys) accepted and not yet delivered, as Java's "
        "buffer.memory; a record larger than this is dropped as too large.",
    )
    block_ms: int = Field(
        default=1_000, ge=0, le=600_000, description="How long report() waits for buffer room."
    )
    retries: int = Field(
        default=2_147_483_647,
        ge=0,
        le=2_147_483_647,
        description="Resends of a batch after a retriable failure (default: no limit; the "
        "buffer bounds what waits).",
    )
    retry_backoff_ms: int = Field(default=100, ge=1, le=60_000)
    reconnect_backoff_max_ms: int = Field(default=5_000, ge=1, le=300_000)
    request_timeout_ms: int = Field(default=30_000, ge=1_000, le=600_000)
    metadata_max_age_ms: int = Field(
        default=300_000, ge=1_000, le=86_400_000, description="Partition counts refresh this often."
    )
    flush_timeout_ms: int = Field(
        default=30_000, ge=0, le=3_600_000, description="How long flush() and close() wait."
    )
    headers: bool = Field(default=False, description="Add task_id and agent_id headers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: Name | None = None
    password: SecretStr | None = Field(default=None, min_length=1, max_length=1024)
    password_file: FilePath | None = Field(
        default=None, description="Read the password from this file (a mounted Secret)."
    )
    ssl_cafile: FilePath | None = None
    ssl_certfile: FilePath | None = None
    ssl_keyfile: FilePath | None = None
    ssl_check_hostname: bool = True

    @field_validator("acks", mode="before")
    @classmethod
    def _acks_as_text(cls, v: object) -> object:
        """Accept YAML's ``acks: 1`` as well as ``"1"``."""
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _consistent(self) -> KafkaConfig:
        """Reject combinations that cannot work, with the fix in the message."""
        if (self.topic is None) == (self.topic_prefix is None):
            raise ValueError("set exactly one of topic and topic_prefix")
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None or self.username is None:
                raise ValueError(f"{self.security_protocol} needs sasl_mechanism and username")
            if (self.password is None) == (self.password_file is None):
                raise ValueError(f"{self.security_protocol} needs one of password, password_file")
        elif self.sasl_mechanism or self.username or self.password or self.password_file:
            raise ValueError("SASL settings need security_protocol SASL_PLAINTEXT or SASL_SSL")
        if self.security_protocol not in ("SSL", "SASL_SSL") and (
            self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile
        ):
            raise ValueError("ssl_* files need security_protocol SSL or SASL_SSL")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        if self.enable_idempotence and self.acks != "all":
            raise ValueError("enable_idempotence needs acks 'all'")
        return self


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``Utils.murmur2`` in the Java client), as an unsigned 32-bit int."""
    length = len(data)
    h = 0x9747B28C ^ length
    # Whole little-endian words at once: about twice as fast as aiokafka's byte-wise version.
    for w in struct.unpack_from(f"<{length >> 2}I", data):
        k = (w * 0x5BD1E995) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * 0x5BD1E995) & 0xFFFFFFFF) ^ ((k * 0x5BD1E995) & 0xFFFFFFFF)
    rem = length & 3
    if rem:
        base = length - rem
        if rem == 3:
            h ^= data[base + 2] << 16
        if rem >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner picks for a key: ``toPositive(murmur2) % n``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def check_codec(name: str) -> None:
    """Fail at construction, not at the first batch, when a codec's library is missing."""
    from aiokafka import codec  # noqa: PLC0415 - aiokafka loads only when Kafka is used

    available = {
        "none": True,
        "gzip": codec.has_gzip(),
        "snappy": codec.has_snappy(),
        "lz4": codec.has_lz4(),
        "zstd": codec.has_zstd(),
    }
    if not available[name]:
        raise ReporterError(
            f"kafka: compression {name!r} needs the cramjam package (aiokafka[{name}])"
        )


def ssl_context(cfg: KafkaConfig) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL, built now so a bad path fails at construction."""
    if cfg.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ssl_cafile)
        ctx.check_hostname = cfg.ssl_check_hostname
        if cfg.ssl_certfile:
            ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    except (OSError, ssl.SSLError) as e:
        raise ReporterError(f"kafka: TLS files: {e}") from e
    return ctx


def read_password(cfg: KafkaConfig) -> str | None:
    """The SASL password, from the config or the first line of ``password_file``."""
    if cfg.password is not None:
        return cfg.password.get_secret_value()
    if cfg.password_file is None:
        return None
    try:
        return Path(cfg.password_file).read_text().splitlines()[0]
    except (OSError, IndexError) as e:
        raise ReporterError(f"kafka: cannot read password_file {cfg.password_file}: {e}") from e
