"""Listeners, TLS and SASL against a real ``flowbus broker`` process and real clients (issue 14).

One broker serves four listeners at once: PLAINTEXT (the test harness's ``--listen``),
SASL_PLAINTEXT advertised as ``localhost``, SSL with optional client certificates and SASL_SSL,
with a throwaway CA. Users are created with ``flowbus users add`` before it starts. librdkafka
(confluent-kafka and kcat), kafka-python and aiokafka log in with PLAIN, SCRAM-SHA-256 and
SCRAM-SHA-512 and produce and consume; raw frames check what a client that skips or fails
authentication gets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from flowbus.protocol.error_codes import ErrorCode
from tests.support.broker_process import BrokerProcess, free_port
from tests.support.certs import Pem, TestCa

FLOWBUS = [sys.executable, "-m", "flowbus"]
PASSWORD = "alice-secret-7"
BOB_PASSWORD = "bob-secret-9"
SOCKET_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 30.0


@dataclass
class Secured:
    broker: BrokerProcess
    ca: Pem
    client: Pem
    sasl_port: int
    ssl_port: int
    sasl_ssl_port: int
    tmp: Path

    def sasl(self, mechanism: str, user: str = "alice", password: str = PASSWORD, *, tls: bool = False) -> dict[str, Any]:
        config = {
            "bootstrap.servers": f"127.0.0.1:{self.sasl_ssl_port if tls else self.sasl_port}",
            "security.protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password,
        }
        if tls:
            config["ssl.ca.location"] = str(self.ca.cert)
        return config


def run_cli(args: list[str], *, stdin: str | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOWBUS, *args], input=stdin, capture_output=True, text=True, timeout=timeout_s,
                          check=False)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("security")
    ca = TestCa(tmp / "certs")
    server = ca.issue("server", "localhost", server=True)
    client = ca.issue("client", "flowbus-client", server=False)
    data_dir = tmp / "data"
    for args, password in (
        (["alice"], PASSWORD),
        (["bob", "--mechanism", "SCRAM-SHA-256", "--iterations", "4096"], BOB_PASSWORD),
    ):
        result = run_cli(["users", "add", *args, "--password-file", "-", "--data-dir", str(data_dir)], stdin=password)
        assert result.returncode == 0, result.stderr
    sasl_port, ssl_port, sasl_ssl_port = free_port(), free_port(), free_port()
    extra = [
        "--group-initial-rebalance-delay-ms", "0",
        "--listener", f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "--advertised-listener", f"SASL_PLAINTEXT://localhost:{sasl_port}",
        "--listener", f"SSL://127.0.0.1:{ssl_port}",
        "--listener", f"SASL_SSL://127.0.0.1:{sasl_ssl_port}",
        "--ssl-certfile", str(server.cert), "--ssl-keyfile", str(server.key),
        "--ssl-cafile", str(ca.pem.cert), "--ssl-client-auth", "requested",
    ]
    with BrokerProcess(data_dir, extra_args=extra) as broker:
        yield Secured(broker, ca.pem, client, sasl_port, ssl_port, sasl_ssl_port, tmp)


# -- raw frames ---------------------------------------------------------------------------

def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("closed by the broker")
        chunks += chunk
    return bytes(chunks)


def call(sock: socket.socket, api_key: ApiKey, version: int, body: dict[str, Any], correlation_id: int = 1) -> dict[str, Any]:
    sock.sendall(encode_request(int(api_key), version, correlation_id, "security-test", body))
    (size,) = struct.unpack(">i", recv_exactly(sock, 4))
    got, response = decode_response(int(api_key), version, recv_exactly(sock, size))
    assert got == correlation_id
    return response


def assert_closed(sock: socket.socket) -> None:
    """The broker closed the connection (reads end, or reset)."""
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass


def connect(port: int, *, tls_context: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S)
    if tls_context is not None:
        return tls_context.wrap_socket(sock, server_hostname="localhost")
    return sock


def plain_login(sock: socket.socket, user: str, password: str) -> dict[str, Any]:
    handshake = call(sock, ApiKey.SASL_HANDSHAKE, 1, {"mechanism": "PLAIN"})
    assert handshake["error_code"] == 0 and "SCRAM-SHA-512" in handshake["mechanisms"]
    return call(sock, ApiKey.SASL_AUTHENTICATE, 2, {"auth_bytes": f"\0{user}\0{password}".encode()}, 2)


def metadata_address(sock: socket.socket) -> tuple[str, int]:
    response = call(sock, ApiKey.METADATA, 1, {"topics": []}, 3)
    (broker,) = response["brokers"]
    return broker["host"], broker["port"]


def test_each_listener_advertises_its_own_address(secured: Secured) -> None:
    with connect(secured.broker.port) as sock:
        assert metadata_address(sock) == ("127.0.0.1", secured.broker.port)
    with connect(secured.sasl_port) as sock:
        assert plain_login(sock, "alice", PASSWORD)["error_code"] == 0
        assert metadata_address(sock) == ("localhost", secured.sasl_port)
        response = call(sock, ApiKey.FIND_COORDINATOR, 1, {"key": "g", "key_type": 0}, 4)
        assert (response["host"], response["port"]) == ("localhost", secured.sasl_port)
    context = ssl.create_default_context(cafile=str(secured.ca.cert))
    with connect(secured.ssl_port, tls_context=context) as sock:
        assert metadata_address(sock) == ("127.0.0.1", secured.ssl_port)


def test_skipping_authentication_gets_only_api_versions_and_the_handshake(secured: Secured) -> None:
    with connect(secured.sasl_port) as sock:
        versions = call(sock, ApiKey.API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
        assert versions["error_code"] == 0
        sock.sendall(encode_request(int(ApiKey.METADATA), 1, 2, "skipper", {"topics": []}))
        assert_closed(sock)
    with connect(secured.sasl_port) as sock:
        assert call(sock, ApiKey.SASL_HANDSHAKE, 1, {"mechanism": "SCRAM-SHA-256"})["error_code"] == 0
        sock.sendall(encode_request(int(ApiKey.CREATE_TOPICS), 0, 2, "skipper", {
            "topics": [{"name": "sneaky", "num_partitions": 1, "replication_factor": 1,
                        "assignments": [], "configs": []}], "timeout_ms": 1000}))
        assert_closed(sock)
    with connect(secured.broker.port) as sock:  # nothing was created meanwhile
        topics = call(sock, ApiKey.METADATA, 4, {"topics": [{"name": "sneaky"}], "allow_auto_topic_creation": False})
        assert topics["topics"][0]["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_an_unauthenticated_connection_cannot_send_a_large_frame(secured: Secured) -> None:
    """Before authentication a frame is limited to 64 KiB (not the 32 MiB of an authenticated
    one): an anonymous peer cannot make the broker buffer much."""
    with connect(secured.sasl_port) as sock:
        sock.sendall(struct.pack(">i", 1_000_000) + b"\0" * 1024)
        assert_closed(sock)
    with connect(secured.sasl_port) as sock:  # others are still served
        assert plain_login(sock, "alice", PASSWORD)["error_code"] == 0


def test_a_wrong_password_is_refused_and_the_connection_closed(secured: Secured) -> None:
    with connect(secured.sasl_port) as sock:
        answer = plain_login(sock, "alice", "not-the-password")
        assert answer["error_code"] == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert_closed(sock)
    with connect(secured.sasl_port) as sock:  # an unknown user looks the same
        assert plain_login(sock, "mallory", PASSWORD)["error_code"] == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert_closed(sock)
    for garbage in (b"\xff\x00garbage", b"n,,n=alice,r=" + b"x" * 5000, b"y" * 20_000):
        with connect(secured.sasl_port) as sock:  # hostile SCRAM tokens: an error, this connection closed
            assert call(sock, ApiKey.SASL_HANDSHAKE, 1, {"mechanism": "SCRAM-SHA-256"})["error_code"] == 0
            answer = call(sock, ApiKey.SASL_AUTHENTICATE, 2, {"auth_bytes": garbage}, 2)
            assert answer["error_code"] == ErrorCode.SASL_AUTHENTICATION_FAILED
            assert_closed(sock)
    with connect(secured.broker.port) as sock:  # PLAINTEXT: no SASL there, as in Kafka
        assert call(sock, ApiKey.SASL_HANDSHAKE, 1, {"mechanism": "PLAIN"})["error_code"] == ErrorCode.ILLEGAL_SASL_STATE


def test_librdkafka_reports_a_wrong_scram_password(secured: Secured) -> None:
    errors: list[confluent_kafka.KafkaError] = []
    producer = confluent_kafka.Producer({**secured.sasl("SCRAM-SHA-512", password="wrong"),
                                         "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    assert errors and errors[0].code() == confluent_kafka.KafkaError._AUTHENTICATION
    assert "Authentication failed" in errors[0].str()
    assert "authentication failed: wrong proof (user 'alice')" in secured.broker.log_text()


def produce_and_consume(config: dict[str, Any], topic: str) -> list[bytes]:
    producer = confluent_kafka.Producer(config)
    delivered: list[Any] = []
    for i in range(3):
        producer.produce(topic, f"v{i}".encode(), on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(CLIENT_TIMEOUT_S) == 0 and delivered == [None, None, None]
    consumer = confluent_kafka.Consumer({**config, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    try:
        while len(values) < 3 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value())
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return values


@pytest.mark.parametrize("mechanism,tls", [
    ("PLAIN", False), ("SCRAM-SHA-256", False), ("SCRAM-SHA-512", False), ("SCRAM-SHA-512", True), ("PLAIN", True),
])
def test_confluent_kafka_produces_and_consumes_after_sasl(secured: Secured, mechanism: str, tls: bool) -> None:
    topic = f"sasl-{mechanism.lower()}-{'ssl' if tls else 'plain'}"
    assert produce_and_consume(secured.sasl(mechanism, tls=tls), topic) == [b"v0", b"v1", b"v2"]


def test_a_user_with_only_scram_sha_256_logs_in_with_it_and_plain(secured: Secured) -> None:
    assert produce_and_consume(secured.sasl("SCRAM-SHA-256", "bob", BOB_PASSWORD), "bob-scram") == [b"v0", b"v1", b"v2"]
    assert produce_and_consume(secured.sasl("PLAIN", "bob", BOB_PASSWORD), "bob-plain") == [b"v0", b"v1", b"v2"]


def test_tls_client_certificate_subject_becomes_the_principal(secured: Secured) -> None:
    config = {
        "bootstrap.servers": f"127.0.0.1:{secured.ssl_port}", "security.protocol": "SSL",
        "ssl.ca.location": str(secured.ca.cert),
        "ssl.certificate.location": str(secured.client.cert), "ssl.key.location": str(secured.client.key),
    }
    assert produce_and_consume(config, "tls-client-cert") == [b"v0", b"v1", b"v2"]
    assert "on listener SSL: TLS client User:CN=flowbus-client,O=flowbus-tests" in secured.broker.log_text()
    # ``requested``: a client without a certificate is served too (as User:ANONYMOUS).
    anonymous = {key: value for key, value in config.items() if not key.startswith("ssl.c") and key != "ssl.key.location"}
    assert produce_and_consume({**anonymous, "ssl.ca.location": str(secured.ca.cert)}, "tls-anonymous") == [b"v0", b"v1", b"v2"]


def test_a_plaintext_client_on_the_tls_port_gets_nothing(secured: Secured) -> None:
    with connect(secured.ssl_port) as sock:
        sock.sendall(encode_request(int(ApiKey.API_VERSIONS), 0, 1, "plain", {}))
        assert_closed(sock)


def test_kafka_python_scram_over_sasl_ssl(secured: Secured) -> None:
    import kafka

    common: dict[str, Any] = {
        "bootstrap_servers": f"127.0.0.1:{secured.sasl_ssl_port}", "security_protocol": "SASL_SSL",
        "ssl_cafile": str(secured.ca.cert), "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "alice", "sasl_plain_password": PASSWORD,
    }
    producer = kafka.KafkaProducer(**common)
    producer.send("kafka-python-sasl", b"hello").get(timeout=CLIENT_TIMEOUT_S)
    producer.close()
    consumer = kafka.KafkaConsumer("kafka-python-sasl", auto_offset_reset="earliest",
                                   consumer_timeout_ms=int(CLIENT_TIMEOUT_S * 1000), **common)
    try:
        assert next(iter(consumer)).value == b"hello"
    finally:
        consumer.close()
    with pytest.raises(kafka.errors.KafkaError):
        kafka.KafkaProducer(**{**common, "sasl_plain_password": "wrong"}, max_block_ms=5000,
                            bootstrap_timeout_ms=3000)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_aiokafka_over_sasl_plaintext(secured: Secured, mechanism: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"aiokafka-{mechanism.lower()}"
    common: dict[str, Any] = {
        "bootstrap_servers": f"127.0.0.1:{secured.sasl_port}", "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism, "sasl_plain_username": "alice", "sasl_plain_password": PASSWORD,
    }

    async def main() -> bytes:
        producer = AIOKafkaProducer(**common)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"from-aiokafka")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **common)
        await consumer.start()
        try:
            message = await asyncio.wait_for(consumer.getone(), CLIENT_TIMEOUT_S)
            return bytes(message.value)
        finally:
            await consumer.stop()

    assert asyncio.run(asyncio.wait_for(main(), 60)) == b"from-aiokafka"


def test_kcat_over_sasl_ssl(secured: Secured) -> None:
    import shutil

    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        pytest.skip("kcat is not installed")
    security = ["-b", f"127.0.0.1:{secured.sasl_ssl_port}", "-X", "security.protocol=SASL_SSL",
                "-X", "sasl.mechanisms=SCRAM-SHA-256", "-X", "sasl.username=alice",
                "-X", f"sasl.password={PASSWORD}", "-X", f"ssl.ca.location={secured.ca.cert}"]
    produced = subprocess.run([kcat, *security, "-P", "-t", "kcat-sasl"], input="one\ntwo\n",
                              capture_output=True, text=True, timeout=60, check=False)
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run([kcat, *security, "-C", "-t", "kcat-sasl", "-o", "beginning", "-e", "-q"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.split() == ["one", "two"]
    wrong = [item.replace(PASSWORD, "wrong") for item in security]
    refused = subprocess.run([kcat, *wrong, "-L", "-m", "5"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "Authentication failed" in refused.stderr


def test_scram_credentials_through_the_admin_client(secured: Secured) -> None:
    admin = AdminClient({**secured.sasl("SCRAM-SHA-512"), "log_level": 0})
    described = admin.describe_user_scram_credentials(["alice", "bob"])
    alice = described["alice"].result(CLIENT_TIMEOUT_S)
    assert sorted((i.mechanism, i.iterations) for i in alice.scram_credential_infos) == [
        (ScramMechanism.SCRAM_SHA_256, 8192), (ScramMechanism.SCRAM_SHA_512, 8192)]
    with pytest.raises(confluent_kafka.KafkaException, match="RESOURCE_NOT_FOUND|does not exist"):
        admin.describe_user_scram_credentials(["nobody"])["nobody"].result(CLIENT_TIMEOUT_S)
    carol_password = f"carol-{uuid.uuid4().hex}"
    upsert = UserScramCredentialUpsertion(
        "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), carol_password.encode())
    assert admin.alter_user_scram_credentials([upsert])["carol"].result(CLIENT_TIMEOUT_S) is None
    credentials_file = secured.broker.data_dir / "credentials.json"
    text = credentials_file.read_text()
    assert "carol" in text and carol_password not in text and PASSWORD not in text
    assert set(json.loads(text)["users"]["carol"]) == {"SCRAM-SHA-256"}
    assert produce_and_consume(secured.sasl("SCRAM-SHA-256", "carol", carol_password), "carol-topic") == \
        [b"v0", b"v1", b"v2"]
    too_few = UserScramCredentialUpsertion(
        "dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 1000), b"pw")
    with pytest.raises(confluent_kafka.KafkaException):
        admin.alter_user_scram_credentials([too_few])["dave"].result(CLIENT_TIMEOUT_S)
    delete = UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_256)
    assert admin.alter_user_scram_credentials([delete])["carol"].result(CLIENT_TIMEOUT_S) is None
    with connect(secured.sasl_port) as sock:
        assert plain_login(sock, "carol", carol_password)["error_code"] == ErrorCode.SASL_AUTHENTICATION_FAILED


def test_users_cli_against_the_running_broker(secured: Secured) -> None:
    # The password comes from a file: the command line refuses one written into the URL.
    password_file = secured.tmp / "alice-password"
    password_file.write_text(PASSWORD + "\n")
    bootstrap = (f"kafka://alice@127.0.0.1:{secured.sasl_port}?sasl.mechanism=SCRAM-SHA-256"
                 f"&sasl.password.file={password_file}")
    added = run_cli(["users", "add", "erin", "--mechanism", "SCRAM-SHA-512", "--password-file", "-",
                     "--bootstrap", bootstrap], stdin="erin-pw\n")
    assert added.returncode == 0, added.stderr
    listed = run_cli(["users", "list", "--bootstrap", f"127.0.0.1:{secured.broker.port}"])
    assert listed.returncode == 0, listed.stderr
    assert "erin\tSCRAM-SHA-512 (8192 iterations)" in listed.stdout.splitlines()
    with connect(secured.sasl_port) as sock:
        assert plain_login(sock, "erin", "erin-pw")["error_code"] == 0
    deleted = run_cli(["users", "delete", "erin", "--bootstrap", f"127.0.0.1:{secured.broker.port}"])
    assert deleted.returncode == 0, deleted.stderr
    # The data dir of a running broker is not edited behind its back.
    offline = run_cli(["users", "list", "--data-dir", str(secured.broker.data_dir)])
    assert offline.returncode == 1 and "use --bootstrap" in offline.stderr


def test_users_cli_on_a_stopped_brokers_data_dir(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    assert run_cli(["users", "add", "x", "--password-file", "-", "--data-dir", data_dir], stdin="pw\n").returncode == 0
    listed = run_cli(["users", "list", "--data-dir", data_dir])
    assert listed.stdout == "x\tSCRAM-SHA-256 (8192 iterations), SCRAM-SHA-512 (8192 iterations)\n"
    bad = run_cli(["users", "add", "y", "--iterations", "100", "--password-file", "-", "--data-dir", data_dir], stdin="pw")
    assert bad.returncode == 2 and "4096" in bad.stderr
    empty = run_cli(["users", "add", "y", "--password-file", "-", "--data-dir", data_dir], stdin="\n")
    assert empty.returncode == 2 and "empty" in empty.stderr
    assert run_cli(["users", "delete", "x", "--mechanism", "SCRAM-SHA-256", "--data-dir", data_dir]).returncode == 0
    assert run_cli(["users", "list", "--data-dir", data_dir]).stdout == "x\tSCRAM-SHA-512 (8192 iterations)\n"
    missing = run_cli(["users", "delete", "nobody", "--data-dir", data_dir])
    assert missing.returncode == 1 and "no user nobody" in missing.stderr


SIMPLE_APP = textwrap.dedent(
    """
    from flowbus import App

    app = App("secured-app")
    src = app.topic("secured-src")
    dst = app.topic("secured-dst")

    @app.agent(src, sink=[dst])
    async def double(stream):
        async for value in stream:
            yield value * 2
    """
)


def test_a_worker_connects_with_the_security_settings_in_its_url(secured: Secured, tmp_path: Path) -> None:
    (tmp_path / "secured_app.py").write_text(SIMPLE_APP)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    url = (f"kafkas://127.0.0.1:{secured.sasl_ssl_port}?sasl.mechanism=SCRAM-SHA-256&sasl.username=alice"
           f"&sasl.password.file={password_file}&ssl.ca.location={secured.ca.cert}")
    worker = subprocess.Popen([*FLOWBUS, "worker", "-A", "secured_app:app", "--broker", url],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        config = secured.sasl("SCRAM-SHA-512")
        producer = confluent_kafka.Producer(config)
        for i in range(3):
            producer.produce("secured-src", json.dumps(i).encode())
        assert producer.flush(CLIENT_TIMEOUT_S) == 0
        consumer = confluent_kafka.Consumer({**config, "group.id": "secured-check", "auto.offset.reset": "earliest"})
        consumer.subscribe(["secured-dst"])
        values: list[Any] = []
        deadline = time.monotonic() + 60
        try:
            while len(values) < 3 and time.monotonic() < deadline and worker.poll() is None:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    values.append(json.loads(message.value()))
        finally:
            consumer.close()
        assert sorted(values) == [0, 2, 4], (worker.poll(), secured.broker.log_tail())
    finally:
        worker.terminate()
        try:
            _, stderr = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, stderr = worker.communicate(timeout=10)
    assert PASSWORD not in stderr


def test_an_embedded_broker_served_with_listen_is_secured_the_same_way(tmp_path: Path) -> None:
    (tmp_path / "secured_app.py").write_text(SIMPLE_APP)
    data_dir = tmp_path / "data"
    added = run_cli(["users", "add", "alice", "--password-file", "-", "--data-dir", str(data_dir)], stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    port = free_port()
    listen = f"SASL_PLAINTEXT://127.0.0.1:{port}?sasl.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512"
    worker = subprocess.Popen([*FLOWBUS, "worker", "-A", "secured_app:app", "--data-dir", str(data_dir),
                               "--listen", listen], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        config = {"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_PLAINTEXT",
                  "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice", "sasl.password": PASSWORD}
        producer = confluent_kafka.Producer(config)
        for i in range(3):
            producer.produce("secured-src", json.dumps(i).encode())
        assert producer.flush(CLIENT_TIMEOUT_S) == 0
        consumer = confluent_kafka.Consumer({**config, "group.id": "embedded-check", "auto.offset.reset": "earliest"})
        consumer.subscribe(["secured-dst"])
        values: list[Any] = []
        try:
            while len(values) < 3 and time.monotonic() < deadline and worker.poll() is None:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    values.append(json.loads(message.value()))
        finally:
            consumer.close()
        assert sorted(values) == [0, 2, 4]
        with connect(port) as sock:  # PLAIN is not offered on this listener
            answer = call(sock, ApiKey.SASL_HANDSHAKE, 1, {"mechanism": "PLAIN"})
            assert answer["error_code"] == ErrorCode.UNSUPPORTED_SASL_MECHANISM
            assert answer["mechanisms"] == ["SCRAM-SHA-256", "SCRAM-SHA-512"]
            assert_closed(sock)
        with connect(port) as sock:
            sock.sendall(encode_request(int(ApiKey.METADATA), 1, 1, "skipper", {"topics": []}))
            assert_closed(sock)
    finally:
        worker.terminate()
        try:
            worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate(timeout=10)


def test_librdkafka_reauthenticates_before_the_session_ends(tmp_path: Path) -> None:
    """KIP-368: with --connections-max-reauth-ms the session lifetime is sent, librdkafka logs in
    again on the same connection before it ends, and nothing is closed for expiry."""
    data_dir = tmp_path / "data"
    added = run_cli(["users", "add", "alice", "--password-file", "-", "--data-dir", str(data_dir)], stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    sasl_port = free_port()
    extra = ["--listener", f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}", "--connections-max-reauth-ms", "1500"]
    with BrokerProcess(data_dir, extra_args=extra, log_level="debug") as broker:
        config = {"bootstrap.servers": f"127.0.0.1:{sasl_port}", "security.protocol": "SASL_PLAINTEXT",
                  "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alice", "sasl.password": PASSWORD}
        producer = confluent_kafka.Producer(config)
        delivered: list[Any] = []
        started = time.monotonic()
        while time.monotonic() - started < 5:
            producer.produce("reauth", b"x", on_delivery=lambda err, msg: delivered.append(err))
            producer.poll(0.2)
        assert producer.flush(CLIENT_TIMEOUT_S) == 0
        assert delivered and all(err is None for err in delivered)
        log_text = broker.log_text()
        assert "re-authenticated as User:alice" in log_text
        assert "SASL session expired" not in log_text


@pytest.mark.parametrize("args,message", [
    (["--listener", "HTTP://127.0.0.1:0"], "unknown security protocol"),
    (["--listener", "SSL://127.0.0.1:0"], "needs --ssl-certfile"),
    (["--listener", "SASL_PLAINTEXT://127.0.0.1:0", "--listener", "SASL_PLAINTEXT://127.0.0.1:0"], "names must differ"),
    (["--listener", "SASL_PLAINTEXT://127.0.0.1:0", "--sasl-mechanisms", "GSSAPI"], "SASL mechanisms are some of"),
    (["--listener", "SSL://127.0.0.1:0", "--ssl-certfile", "/nonexistent.pem"], "cannot load the TLS certificate"),
])
def test_bad_security_settings_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli(["broker", "--data-dir", str(tmp_path / "data"), *args])
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_required_client_certificates(secured: Secured, tmp_path: Path) -> None:
    """``--ssl-client-auth required``: no certificate, no connection; with one, served."""
    certs = secured.ca.cert.parent
    ssl_port = free_port()
    extra = ["--listener", f"SSL://127.0.0.1:{ssl_port}", "--ssl-certfile", str(certs / "server.pem"),
             "--ssl-keyfile", str(certs / "server.key"), "--ssl-cafile", str(secured.ca.cert),
             "--ssl-client-auth", "required"]
    with BrokerProcess(tmp_path / "data", extra_args=extra) as broker:
        anonymous = ssl.create_default_context(cafile=str(secured.ca.cert))
        # TLS 1.3 reports the missing certificate on the first read, not in the handshake.
        with pytest.raises((ssl.SSLError, ConnectionError)), connect(ssl_port, tls_context=anonymous) as sock:
            call(sock, ApiKey.API_VERSIONS, 0, {})
        with_cert = ssl.create_default_context(cafile=str(secured.ca.cert))
        with_cert.load_cert_chain(str(secured.client.cert), str(secured.client.key))
        with connect(ssl_port, tls_context=with_cert) as sock:
            assert call(sock, ApiKey.API_VERSIONS, 0, {})["error_code"] == 0
        assert "TLS client User:CN=flowbus-client,O=flowbus-tests" in broker.log_text()


def test_scram_credentials_through_kafka_pythons_admin_client(secured: Secured) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.admin import ScramMechanism as KpMechanism
    from kafka.admin import UserScramCredentialDeletion as KpDeletion
    from kafka.admin import UserScramCredentialUpsertion as KpUpsertion

    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{secured.sasl_port}", security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="alice",
                             sasl_plain_password=PASSWORD)
    try:
        frank_password = f"frank-{uuid.uuid4().hex}"
        result = admin.alter_user_scram_credentials(
            [KpUpsertion("frank", KpMechanism.SCRAM_SHA_512, frank_password, iterations=4096)])
        assert not any(result.values()), result
        described = admin.describe_user_scram_credentials(["frank"])
        assert described["frank"]["error"] is None
        assert [(i["mechanism"], i["iterations"]) for i in described["frank"]["credential_infos"]] == \
            [(KpMechanism.SCRAM_SHA_512, 4096)]
        assert frank_password not in (secured.broker.data_dir / "credentials.json").read_text()
        with connect(secured.sasl_port) as sock:
            assert plain_login(sock, "frank", frank_password)["error_code"] == 0
        result = admin.alter_user_scram_credentials([KpDeletion("frank", KpMechanism.SCRAM_SHA_512)])
        assert not any(result.values()), result
    finally:
        admin.close()
