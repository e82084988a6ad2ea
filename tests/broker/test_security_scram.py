"""SCRAM, the credential store, the SASL state machine, listener specs and security URLs,
without sockets (issue 14). The real-client tests are in ``test_security_listeners.py``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest

from flowbus.broker.errors import CloseAfterResponse
from flowbus.broker.security.credentials import CredentialStore
from flowbus.broker.security.errors import CredentialError, SecurityConfigError
from flowbus.broker.security.listeners import (
    SecurityProtocol,
    parse_advertised,
    parse_listener,
    principal_of_certificate,
    resolve_listeners,
)
from flowbus.broker.security.sasl import SaslSession, SaslSettings
from flowbus.broker.security.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_512,
    ScramAuthenticationError,
    ScramCredential,
    ScramProtocolError,
    ScramServer,
)
from flowbus.protocol.api import ApiKey
from flowbus.protocol.error_codes import ErrorCode
from flowbus.transports.errors import TransportError
from flowbus.transports.kafka import client_config_from_url, redact_url

# RFC 7677 section 3: the SCRAM-SHA-256 example exchange (user "user", password "pencil").
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_server(password: str = "pencil") -> ScramServer:
    credential = ScramCredential.from_password(SCRAM_SHA_256, password, iterations=4096, salt=RFC_SALT)
    return ScramServer(SCRAM_SHA_256, {"user": credential}.get, b"secret", server_nonce=RFC_SERVER_NONCE)


def test_rfc_7677_exchange() -> None:
    server = rfc_server()
    assert server.receive_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.receive_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.user == "user"


def test_wrong_password_fails_at_the_proof() -> None:
    server = rfc_server(password="not-pencil")
    server.receive_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramAuthenticationError, match="wrong proof"):
        server.receive_client_final(RFC_CLIENT_FINAL)


def test_a_changed_nonce_fails() -> None:
    server = rfc_server()
    server.receive_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramAuthenticationError, match="nonce"):
        server.receive_client_final(RFC_CLIENT_FINAL.replace(b"k0,p=", b"k1,p="))


def test_the_nonce_of_librdkafka_2_0_is_accepted_as_kafka_does() -> None:
    """librdkafka 2.0.x repeats the client nonce before the full nonce; Kafka checks that the
    nonce ends with the server's, so those clients work there. The proof still decides."""
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_first_bare = RFC_CLIENT_FIRST.decode()[3:]
    without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO" + RFC_SERVER_FIRST.decode()[2:].split(",")[0]
    auth_message = f"{client_first_bare},{RFC_SERVER_FIRST.decode()},{without_proof}".encode()
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    server = rfc_server()
    server.receive_client_first(RFC_CLIENT_FIRST)
    assert server.receive_client_final(f"{without_proof},p={proof}".encode()).startswith(b"v=")


def test_an_unknown_user_gets_a_stable_fake_salt_and_fails_at_the_proof() -> None:
    def first(server: ScramServer) -> bytes:
        return server.receive_client_first(b"n,,n=nobody,r=abc")

    a = ScramServer(SCRAM_SHA_256, {}.get, b"secret", server_nonce="x")
    b = ScramServer(SCRAM_SHA_256, {}.get, b"secret", server_nonce="x")
    assert first(a) == first(b)
    assert b",s=" in first(ScramServer(SCRAM_SHA_256, {}.get, b"secret"))
    with pytest.raises(ScramAuthenticationError):
        a.receive_client_final(b"c=biws,r=abcx,p=" + base64.b64encode(b"\0" * 32))


@pytest.mark.parametrize("message", [
    b"p=tls-unique,,n=user,r=abc",   # channel binding asked for
    b"n,,n=user,r=abc,e=ext",         # an extension (Kafka's tokenauth)
    b"n,,r=abc",                      # no user
    b"n,,n=us=er,r=abc",              # a bad escape
    b"\xff\xfe",                      # not UTF-8
])
def test_malformed_client_first_is_a_protocol_error(message: bytes) -> None:
    with pytest.raises(ScramProtocolError):
        ScramServer(SCRAM_SHA_256, {}.get, b"s").receive_client_first(message)


def test_client_final_before_client_first_is_refused() -> None:
    with pytest.raises(ScramProtocolError):
        ScramServer(SCRAM_SHA_256, {}.get, b"s").receive_client_final(RFC_CLIENT_FINAL)


def test_a_credential_from_the_salted_password_equals_one_from_the_password() -> None:
    salted = hashlib.pbkdf2_hmac("sha512", b"pw", b"saltsalt", 4096)
    assert ScramCredential.from_salted_password(SCRAM_SHA_512, salted, b"saltsalt", 4096) == \
        ScramCredential.from_password(SCRAM_SHA_512, "pw", iterations=4096, salt=b"saltsalt")


@pytest.mark.parametrize("iterations", [1, 4095, 16385])
def test_iterations_outside_kafkas_range_are_refused(iterations: int) -> None:
    with pytest.raises(CredentialError, match="iterations"):
        ScramCredential.from_password(SCRAM_SHA_256, "pw", iterations=iterations)


def test_the_store_file_holds_keys_never_the_password(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    password = "correct horse battery staple"
    store.put("alice", ScramCredential.from_password(SCRAM_SHA_256, password, iterations=4096))
    store.put("alice", ScramCredential.from_password(SCRAM_SHA_512, password, iterations=8192))
    store.save()
    raw = store.path.read_bytes()
    assert password.encode() not in raw
    assert base64.b64encode(password.encode()) not in raw
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    entry = json.loads(raw)["users"]["alice"]["SCRAM-SHA-512"]
    assert set(entry) == {"salt", "iterations", "stored_key", "server_key"}
    again = CredentialStore(store.path)
    assert again.users() == ["alice"]
    plain = again.plain_credential("alice")
    assert plain is not None and plain.mechanism is SCRAM_SHA_512
    assert plain.matches_password(password) and not plain.matches_password("wrong")
    assert again.delete("alice", SCRAM_SHA_512) and again.users() == ["alice"]
    assert again.delete("alice") and again.users() == []


def test_a_damaged_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text('{"version": 1, "users": {"a": {"SCRAM-SHA-1": {}}}}')
    with pytest.raises(CredentialError, match="unknown mechanism"):
        CredentialStore(path)
    path.write_text("not json")
    with pytest.raises(CredentialError, match="not a valid credentials file"):
        CredentialStore(path)


# -- the SASL state machine ---------------------------------------------------------------

@pytest.fixture
def settings(tmp_path: Path) -> SaslSettings:
    store = CredentialStore(tmp_path / "credentials.json")
    store.put("alice", ScramCredential.from_password(SCRAM_SHA_256, "pw", iterations=4096))
    return SaslSettings(store, reauth_ms=0)


def plain(user: str, password: str) -> bytes:
    return f"\0{user}\0{password}".encode()


def test_nothing_but_api_versions_and_sasl_before_authentication(settings: SaslSettings) -> None:
    session = SaslSession(settings)
    assert session.allows(ApiKey.API_VERSIONS) and session.allows(ApiKey.SASL_HANDSHAKE)
    assert not session.allows(ApiKey.METADATA) and not session.allows(ApiKey.PRODUCE)
    session.handshake("PLAIN")
    answer = asyncio.run(session.authenticate(2, plain("alice", "pw")))
    assert answer["error_code"] == ErrorCode.NONE and answer["auth_bytes"] == b""
    assert session.principal == "User:alice" and session.allows(ApiKey.METADATA)


def test_a_wrong_plain_password_is_answered_and_closes(settings: SaslSettings) -> None:
    session = SaslSession(settings)
    session.handshake("PLAIN")
    with pytest.raises(CloseAfterResponse) as failed:
        asyncio.run(session.authenticate(2, plain("alice", "nope")))
    assert failed.value.body["error_code"] == ErrorCode.SASL_AUTHENTICATION_FAILED
    assert not session.allows(ApiKey.METADATA)


def test_scram_through_the_session(settings: SaslSettings) -> None:
    session = SaslSession(settings)
    session.handshake("SCRAM-SHA-256")
    client_first_bare = "n=alice,r=clientnonce"
    server_first = asyncio.run(session.authenticate(2, ("n,," + client_first_bare).encode()))["auth_bytes"]
    fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", base64.b64decode(fields["s"]), int(fields["i"]))
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    final = asyncio.run(session.authenticate(2, f"{without_proof},p={proof}".encode()))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    assert final["auth_bytes"] == b"v=" + base64.b64encode(hmac.new(server_key, auth_message, "sha256").digest())
    assert session.principal == "User:alice"


def test_one_attempt_per_connection_and_no_second_handshake(settings: SaslSettings) -> None:
    session = SaslSession(settings)
    with pytest.raises(CloseAfterResponse) as unsupported:
        session.handshake("GSSAPI")
    assert unsupported.value.body["error_code"] == ErrorCode.UNSUPPORTED_SASL_MECHANISM
    with pytest.raises(CloseAfterResponse):
        session.handshake("PLAIN")
    fresh = SaslSession(settings)
    with pytest.raises(CloseAfterResponse) as early:
        asyncio.run(fresh.authenticate(2, plain("alice", "pw")))
    assert early.value.body["error_code"] == ErrorCode.ILLEGAL_SASL_STATE
    done = SaslSession(settings)
    done.handshake("PLAIN")
    asyncio.run(done.authenticate(2, plain("alice", "pw")))
    with pytest.raises(CloseAfterResponse) as again:  # re-authentication is off (reauth_ms 0)
        done.handshake("PLAIN")
    assert again.value.body["error_code"] == ErrorCode.ILLEGAL_SASL_STATE


def test_reauthentication_keeps_the_principal(settings: SaslSettings) -> None:
    settings.reauth_ms = 60_000
    session = SaslSession(settings)
    session.handshake("PLAIN")
    answer = asyncio.run(session.authenticate(1, plain("alice", "pw")))
    assert answer["session_lifetime_ms"] == 60_000
    session.handshake("PLAIN")
    assert session.allows(ApiKey.METADATA)  # the old session holds while re-authenticating
    assert asyncio.run(session.authenticate(1, plain("alice", "pw")))["error_code"] == ErrorCode.NONE
    settings.credentials.put("bob", ScramCredential.from_password(SCRAM_SHA_256, "b", iterations=4096))
    session.handshake("PLAIN")
    with pytest.raises(CloseAfterResponse, match="re-authentication as User:bob"):
        asyncio.run(session.authenticate(1, plain("bob", "b")))


def test_an_oversized_token_is_refused(settings: SaslSettings) -> None:
    session = SaslSession(settings)
    session.handshake("PLAIN")
    with pytest.raises(CloseAfterResponse, match="SASL token"):
        asyncio.run(session.authenticate(2, b"x" * 1_000_000))


# -- listeners and URLs -------------------------------------------------------------------

def test_listener_specs() -> None:
    listener = parse_listener("SASL_SSL://0.0.0.0:9093")
    assert (listener.name, listener.protocol, listener.host, listener.port) == \
        ("SASL_SSL", SecurityProtocol.SASL_SSL, "0.0.0.0", 9093)
    assert parse_listener("internal=plaintext://:9092").name == "INTERNAL"
    for bad in ("HTTP://h:1", "PLAINTEXT://h", "PLAINTEXT:/h:1", "PLAINTEXT://h:70000"):
        with pytest.raises(SecurityConfigError):
            parse_listener(bad)
    resolved = resolve_listeners(
        [parse_listener("SASL_SSL://0.0.0.0:9093"), parse_listener("PLAINTEXT://127.0.0.1:9092")],
        [parse_advertised("SASL_SSL://broker.example:19093")],
    )
    assert [(r.advertised_host, r.advertised_port) for r in resolved] == \
        [("broker.example", 19093), ("127.0.0.1", 9092)]
    with pytest.raises(SecurityConfigError, match="names must differ"):
        resolve_listeners([parse_listener("SSL://:1"), parse_listener("SSL://:2")], [])
    with pytest.raises(SecurityConfigError, match="no listener"):
        resolve_listeners([parse_listener("SSL://:1")], [("OTHER", "h", 1)])


def test_certificate_subject_as_principal() -> None:
    peercert = {"subject": ((("organizationName", "Acme, Inc"),), (("commonName", "svc"),))}
    assert principal_of_certificate(peercert) == "CN=svc,O=Acme\\, Inc"
    assert principal_of_certificate(None) is None and principal_of_certificate({}) is None


def test_security_settings_in_kafka_urls(tmp_path: Path) -> None:
    assert client_config_from_url("kafka://h:1") == {"bootstrap.servers": "h:1"}
    assert client_config_from_url("kafkas://h:1")["security.protocol"] == "SSL"
    config = client_config_from_url("kafka://alice:p%26w@h:1,h:2?sasl.mechanism=SCRAM-SHA-256")
    assert config == {"bootstrap.servers": "h:1,h:2", "security.protocol": "SASL_PLAINTEXT",
                      "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice", "sasl.password": "p&w"}
    password_file = tmp_path / "pw"
    password_file.write_text("from-file\n")
    config = client_config_from_url(f"kafkas://h:1?sasl.username=a&sasl.password.file={password_file}")
    assert config["sasl.password"] == "from-file" and config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert client_config_from_url("kafka://h:1?security.protocol=SSL&sasl.username=a")["security.protocol"] == "SSL"
    assert redact_url("kafka://a:secret@h:1?sasl.password=secret") == "kafka://a:***@h:1?sasl.password=***"
    with pytest.raises(TransportError) as bad:
        client_config_from_url("kafka://a:secret@h:1?oops")
    assert "secret" not in str(bad.value)
