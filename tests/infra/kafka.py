"""A real single-node Apache Kafka broker (KRaft, combined broker+controller) for the test suite.

The jars come from Maven Central through ``tests/infra/kafka-broker/pom.xml`` and are cached in
``${OTUS_CACHE:-.cache}/kafka/<version>/libs``; once there, nothing touches the network again.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "KAFKA_VERSION",
    "SASL_PASSWORD",
    "SASL_USER",
    "KafkaBroker",
    "KafkaBrokerError",
    "ensure_kafka_libs",
    "kafka_broker",
    "kafka_broker_no_autocreate",
    "read_topic",
]

# The newest 4.x whose artifacts were all on Maven Central when pinned (4.4.0's kafka-tools-api
# was missing); its broker runs on Java 17, like every 4.x.
KAFKA_VERSION = "4.3.1"

_REPO = Path(__file__).resolve().parents[2]
_POM = Path(__file__).with_name("kafka-broker") / "pom.xml"
_RESOLVE_TIMEOUT_S = 600.0
_COMPLETE = ".complete"


class KafkaBrokerError(RuntimeError):
    """The broker could not be resolved, formatted, started or stopped."""


def cache_dir() -> Path:
    """Where built test infrastructure lives (``OTUS_CACHE`` or the repo's ``.cache``)."""
    return Path(os.environ.get("OTUS_CACHE") or _REPO / ".cache")


def ensure_kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """Return the directory of the broker's runtime jars, resolving them with Maven once."""
    root = cache_dir() / "kafka" / version
    libs = root / "libs"
    if (libs / _COMPLETE).exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaBrokerError("mvn not found on PATH: cannot resolve the Kafka jars")
    root.mkdir(parents=True, exist_ok=True)
    # A lock so two test processes (unit suite, e2e) sharing a cache do not resolve at once.
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (libs / _COMPLETE).exists():
            return libs
        staging = root / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(_POM),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_RESOLVE_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise KafkaBrokerError(f"mvn did not resolve Kafka {version} in time") from e
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise KafkaBrokerError(f"mvn could not resolve Kafka {version}:\n{tail}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (libs / _COMPLETE).write_text(f"resolved in {time.monotonic() - started:.1f}s\n")
    return libs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kafka_uuid() -> str:
    """A cluster id the way Kafka prints one: 16 random bytes, base64url without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # as Kafka's Uuid.randomUuid: "-t -x..." reads as an option
            return text


SASL_USER = "otus"
SASL_PASSWORD = "otus-secret"
_SCRAM_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.controller.name = org.apache.kafka.controller
logger.controller.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


class KafkaBroker:
    """One KRaft node on 127.0.0.1: ``start()``, ``stop()``, ``restart()`` on the same ports.

    Listeners: PLAINTEXT (``bootstrap``), SASL_PLAINTEXT with PLAIN and SCRAM-SHA-256/512 for
    ``SASL_USER`` (``sasl_bootstrap``) and, when openssl is present, SSL (``ssl_bootstrap``,
    trusting ``ca_file``).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.version = version
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="otus-kafka-"))
        self.heap = heap
        self.port = free_port()
        self.controller_port = free_port()
        self.sasl_port = free_port()
        # TLS needs a CA and a server certificate, made with the openssl command when present.
        self.ssl_port = free_port() if shutil.which("openssl") else None
        self.extra_config = dict(extra_config or {})
        self.log_path = self.workdir / "broker.log"
        self.stdout_path = self.workdir / "stdout.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._formatted = False
        self._libs: Path | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """SASL_PLAINTEXT listener: PLAIN and SCRAM-SHA-256/512 for ``SASL_USER``."""
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str | None:
        """SSL listener (server certificate for IP 127.0.0.1 signed by ``ca_file``), if any."""
        return None if self.ssl_port is None else f"127.0.0.1:{self.ssl_port}"

    @property
    def ca_file(self) -> Path:
        """The test CA that signed the SSL listener's certificate."""
        return self.workdir / "tls" / "ca.pem"

    @property
    def pid(self) -> int | None:
        """The broker JVM's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _write_config(self) -> Path:
        listeners = {"PLAINTEXT": self.port, "SASL_PLAINTEXT": self.sasl_port}
        if self.ssl_port is not None:
            listeners["SSL"] = self.ssl_port
        advertised = ",".join(f"{n}://127.0.0.1:{p}" for n, p in listeners.items())
        conf = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"{advertised},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(f"{n}:{n}" for n in listeners)
            + ",CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'user_{SASL_USER}="{SASL_PASSWORD}";'
            ),
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": _SCRAM_JAAS,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": _SCRAM_JAAS,
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "3",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            # 50 offsets partitions by default: creating them slows the first group join.
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            # Snappy/zstd/lz4 batches are validated, not recompressed: tests read what was sent.
            "compression.type": "producer",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.retention.check.interval.ms": "300000",
        }
        if self.ssl_port is not None:
            conf["ssl.keystore.type"] = "PEM"
            conf["ssl.keystore.location"] = str(self._make_certs())
        conf.update(self.extra_config)
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
        (self.workdir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_path))
        return path

    def _java(self, *args: str, heap: str, jvm: tuple[str, ...] = ()) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaBrokerError("java not found on PATH: Kafka 4.x needs Java 17+")
        assert self._libs is not None
        return [
            java,
            f"-Xmx{heap}",
            "-Xms64m",
            *jvm,
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.workdir}",
            "-cp",
            f"{self._libs}/*",
            *args,
        ]

    def _make_certs(self) -> Path:
        """A CA and a server key+certificate for IP 127.0.0.1, as one PEM keystore file."""
        tls = self.workdir / "tls"
        keystore = tls / "server.pem"
        if keystore.exists():
            return keystore
        tls.mkdir(parents=True, exist_ok=True)
        (tls / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        for cmd in (
            # EC keys: RSA key generation takes seconds on a busy machine.
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7"
            " -subj /CN=otus-test-ca -keyout ca.key -out ca.pem",
            "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1"
            " -keyout server.key -out server.csr",
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7"
            " -extfile san.ext -out server.crt",
        ):
            args = ["openssl", *cmd.split()]
            proc = subprocess.run(args, cwd=tls, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise KafkaBrokerError(f"openssl {cmd} failed:\n{proc.stderr}")
        # Kafka's PEM keystore: the PKCS#8 key, then the certificate.
        keystore.write_text((tls / "server.key").read_text() + (tls / "server.crt").read_text())
        return keystore

    def _format(self, conf: Path) -> None:
        scram = []
        for bits in (256, 512):  # SCRAM users live in the metadata log: add them at format
            scram += [
                "--add-scram",
                f"SCRAM-SHA-{bits}=[name={SASL_USER},password={SASL_PASSWORD}]",
            ]
        cmd = self._java(
            *("kafka.tools.StorageTool", "format", "-t", _kafka_uuid(), "-c", str(conf)),
            *scram,
            heap="256m",
            # A short-lived tool: the C1 compiler and serial GC start several seconds sooner.
            jvm=("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"),
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise KafkaBrokerError(
                f"kafka-storage format failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        self._formatted = True

    def start(self, timeout: float = 120.0) -> None:
        """Format on first use, launch the JVM and wait until a metadata request succeeds."""
        if self.pid is not None:
            return
        self._libs = ensure_kafka_libs(self.version)
        conf = self._write_config()
        if not self._formatted:
            self._format(conf)
        with self.stdout_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self._java(
                    "kafka.Kafka",
                    str(conf),
                    heap=self.heap,
                    jvm=("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"),
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a ^C in pytest must not hit the broker before teardown
            )
        deadline = time.monotonic() + timeout
        last_error = "no attempt yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise KafkaBrokerError(f"Kafka exited with {code} on start\n{self.log_tail()}")
            try:
                if self.port in metadata_broker_ports("127.0.0.1", self.port):
                    return
                last_error = "metadata lists no broker yet"
            except OSError as e:
                last_error = repr(e)
            time.sleep(0.2)
        self.stop()
        raise KafkaBrokerError(
            f"Kafka not ready within {timeout:.0f}s ({last_error})\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if it has not exited within ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # paused, it would not see the SIGTERM until killed
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL at once, like a crashed node."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing is answered, like a hung node."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 120.0) -> None:
        """Stop and start again on the same ports and log dir (the data survives)."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the broker log and the JVM's own output, for failure messages."""
        out = []
        for path in (self.log_path, self.stdout_path):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(out) or "(no broker log)"

    def close(self) -> None:
        """Stop, and delete the work directory if this broker made it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metadata_broker_ports(host: str, port: int, timeout: float = 2.0) -> set[int]:
    """Send a Metadata v4 request for no topics; return the ports of the brokers it lists."""
    client_id = b"otus-test"
    # header v1: api_key 3 (Metadata), api_version 4, correlation_id, client_id
    body = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        data = _recv_exact(s, size)
    # correlation_id, throttle_time_ms, then the brokers array
    pos = 8
    (count,) = struct.unpack_from(">i", data, pos)
    pos += 4
    ports = set()
    for _ in range(count):
        _node, hlen = struct.unpack_from(">ih", data, pos)
        pos += 6 + hlen
        (bport,) = struct.unpack_from(">i", data, pos)
        pos += 4
        (rlen,) = struct.unpack_from(">h", data, pos)
        pos += 2 + max(rlen, 0)
        ports.add(bport)
    return ports


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _skip_without_java() -> None:
    missing = [t for t in ("java", "mvn") if shutil.which(t) is None]
    if "mvn" in missing and (cache_dir() / "kafka" / KAFKA_VERSION / "libs" / _COMPLETE).exists():
        missing.remove("mvn")  # the jars are already cached
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH to run a real Kafka broker")


def _running(broker: KafkaBroker) -> Iterator[KafkaBroker]:
    """Start ``broker`` for a fixture (a failed start fails the test), stop it afterwards."""
    _skip_without_java()
    try:
        broker.start()
    except KafkaBrokerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Kafka broker for the whole session; skips only when java (or mvn, uncached) is missing."""
    yield from _running(KafkaBroker(tmp_path_factory.mktemp("kafka")))


@pytest.fixture(scope="module")
def kafka_broker_no_autocreate(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KafkaBroker]:
    """A second broker that creates no topic on first use, as production clusters often do not."""
    strict = {"auto.create.topics.enable": "false"}
    yield from _running(KafkaBroker(tmp_path_factory.mktemp("kafka-strict"), extra_config=strict))


async def read_topic(bootstrap: str, topic: str, within_s: float = 30.0) -> list[Any]:
    """Every message in ``topic`` up to its current end offsets, by partition then offset."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0:  # 3: no such topic
        return []
    tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + within_s
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} messages of {topic}, end offsets {end}")
            for msgs in (await consumer.getmany(*tps, timeout_ms=500)).values():
                out.extend(msgs)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda m: (m.partition, m.offset))
