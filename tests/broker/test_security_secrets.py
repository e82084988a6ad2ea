"""A worker's password from a file or an environment variable, never argv (issue 14, item 4).

``flowbus worker --broker URL`` against a SASL_SSL listener of a real ``flowbus broker``
(the fixture of ``test_security_listeners``), with ``sasl.password.env=VARNAME`` and with
``sasl.password.file=PATH``: records go through the app. A password written into the URL is
refused before anything starts; an unset variable and a wrong password each end the worker
with one ``Error:`` line that does not show the password (a wrong password at once, as it ends
``flowbus topics list``: waiting does not fix it). The broker's own encrypted TLS key
takes its password the same two ways (``--ssl-key-password-file``/``-env``, and
``ssl.key.password.file=``/``.env=`` in a ``--listen`` URL).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from flowbus.broker.security.errors import SecurityConfigError
from flowbus.broker.security.settings import parse_listen_url
from tests.broker import test_security_listeners as listeners
from tests.broker.test_security_listeners import (
    CLIENT_TIMEOUT_S,
    FLOWBUS,
    PASSWORD,
    SIMPLE_APP,
    Secured,
)
from tests.support.broker_process import BrokerProcess, free_port
from tests.support.certs import Pem, TestCa

#: The module-scoped fixture of ``test_security_listeners``: one SASL/TLS broker for this module too.
secured = listeners.secured

WORKER_TIMEOUT_S = 60.0
PASSWORD_VARIABLE = "FLOWBUS_TEST_WORKER_PASSWORD"


def _url(secured: Secured, password_source: str) -> str:
    return (f"kafkas://alice@127.0.0.1:{secured.sasl_ssl_port}?sasl.mechanism=SCRAM-SHA-512"
            f"&{password_source}&ssl.ca.location={secured.ca.cert}")


def _run_worker(secured: Secured, tmp_path: Path, url: str, topic_suffix: str, env: dict[str, str]) -> str:
    """Start a worker on ``url``, produce 0, 1, 2 and wait for 0, 2, 4; its stderr."""
    app = SIMPLE_APP.replace('"secured-src"', f'"src-{topic_suffix}"').replace('"secured-dst"', f'"dst-{topic_suffix}"')
    app = app.replace('App("secured-app")', f'App("secret-{topic_suffix}")')
    (tmp_path / "secret_app.py").write_text(app)
    worker = subprocess.Popen([*FLOWBUS, "worker", "-A", "secret_app:app", "--broker", url], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        config = secured.sasl("SCRAM-SHA-512")
        producer = confluent_kafka.Producer(config)
        for i in range(3):
            producer.produce(f"src-{topic_suffix}", json.dumps(i).encode())
        assert producer.flush(CLIENT_TIMEOUT_S) == 0
        consumer = confluent_kafka.Consumer({**config, "group.id": f"check-{topic_suffix}",
                                             "auto.offset.reset": "earliest"})
        consumer.subscribe([f"dst-{topic_suffix}"])
        values: list[Any] = []
        deadline = time.monotonic() + WORKER_TIMEOUT_S
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
    return stderr


@pytest.mark.parametrize("source", ["env", "file"])
def test_a_worker_reads_its_password_from_the_environment_or_a_file(secured: Secured, tmp_path: Path,
                                                                     source: str) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    password_source = (f"sasl.password.env={PASSWORD_VARIABLE}" if source == "env"
                       else f"sasl.password.file={password_file}")
    env = {**os.environ, PASSWORD_VARIABLE: PASSWORD}
    stderr = _run_worker(secured, tmp_path, _url(secured, password_source), source, env)
    assert PASSWORD not in stderr


def _worker_fails(tmp_path: Path, url: str, env: dict[str, str], *,
                  broker_timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
    """``flowbus worker --broker URL --timeout-s BROKER_TIMEOUT_S``, expected to stop by itself
    within :data:`WORKER_TIMEOUT_S`."""
    (tmp_path / "secret_app.py").write_text(SIMPLE_APP)
    return subprocess.run([*FLOWBUS, "worker", "-A", "secret_app:app", "--broker", url,
                           "--timeout-s", f"{broker_timeout_s:g}"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_S, check=False)


def test_a_password_in_the_worker_url_is_refused(secured: Secured, tmp_path: Path) -> None:
    url = _url(secured, f"sasl.password={PASSWORD}")
    result = _worker_fails(tmp_path, url, dict(os.environ))
    assert result.returncode == 2
    assert result.stderr == (
        "Error: --broker: sasl.password is not taken from the command line, where other users see it; "
        "use sasl.password.file=PATH or sasl.password.env=VARNAME in the URL instead "
        "(or put the whole URL in $FLOWBUS_BROKER)\n"
    )


def test_an_unset_password_variable_stops_the_worker_in_one_line(secured: Secured, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_VARIABLE}
    result = _worker_fails(tmp_path, _url(secured, f"sasl.password.env={PASSWORD_VARIABLE}"), env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        (f"Error: flowbus worker could not run 'secured-app': sasl.password.env={PASSWORD_VARIABLE}: "
         f"the environment variable {PASSWORD_VARIABLE} is not set"),
    ]


def test_a_wrong_password_stops_the_worker_without_showing_it(secured: Secured, tmp_path: Path) -> None:
    env = {**os.environ, PASSWORD_VARIABLE: "not-" + PASSWORD}
    # --timeout-s beyond the subprocess timeout: the refused login ends the worker, not the wait
    # for a broker that does not answer (waiting does not fix a wrong password).
    result = _worker_fails(tmp_path, _url(secured, f"sasl.password.env={PASSWORD_VARIABLE}"), env,
                           broker_timeout_s=10 * WORKER_TIMEOUT_S)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "Error: flowbus worker could not run 'secured-app': listing topics of "
        f"127.0.0.1:{secured.sasl_ssl_port}: the broker refused the login (SASL authentication error: "
        "Authentication failed: invalid credentials with SASL mechanism SCRAM-SHA-512)"
    ), result.stderr
    assert PASSWORD not in result.stderr


def test_a_wrong_password_stops_a_command_without_showing_it(secured: Secured) -> None:
    """``flowbus topics list`` (every broker command connects the same way): the refused login in
    one line, although --timeout-s would wait far beyond the subprocess timeout for a broker
    that does not answer."""
    env = {**os.environ, PASSWORD_VARIABLE: "not-" + PASSWORD}
    result = subprocess.run(
        [*FLOWBUS, "topics", "list", "--broker", _url(secured, f"sasl.password.env={PASSWORD_VARIABLE}"),
         "--timeout-s", f"{10 * WORKER_TIMEOUT_S:g}"],
        capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        (f"Error: listing topics of 127.0.0.1:{secured.sasl_ssl_port}: the broker refused the login (SASL "
         "authentication error: Authentication failed: invalid credentials with SASL mechanism SCRAM-SHA-512)"),
    ], result.stderr
    assert PASSWORD not in result.stderr + result.stdout


# -- an encrypted broker key: ssl.key.password from a file or the environment ------------------

KEY_PASSWORD = "key-secret-3"


@pytest.fixture(scope="module")
def encrypted_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pem, Path]:
    """A server certificate whose key file is encrypted with :data:`KEY_PASSWORD`, and its CA."""
    from cryptography.hazmat.primitives import serialization

    tmp = tmp_path_factory.mktemp("encrypted-key")
    ca = TestCa(tmp / "certs")
    server = ca.issue("server", "localhost", server=True)
    key = serialization.load_pem_private_key(server.key.read_bytes(), None)
    encrypted = tmp / "server-encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(KEY_PASSWORD.encode())))
    return Pem(server.cert, encrypted), ca.pem.cert


def _broker_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``flowbus broker ARGS`` that is expected to stop at start-up."""
    return subprocess.run([*FLOWBUS, "broker", *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("source", ["file", "env"])
def test_the_broker_reads_its_key_password_from_a_file_or_the_environment(
        encrypted_key: tuple[Pem, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    server, ca_cert = encrypted_key
    password_file = tmp_path / "key-password"
    password_file.write_text(KEY_PASSWORD + "\n")
    monkeypatch.setenv("FLOWBUS_TEST_KEY_PASSWORD", KEY_PASSWORD)  # the broker process inherits it
    option = (["--ssl-key-password-file", str(password_file)] if source == "file"
              else ["--ssl-key-password-env", "FLOWBUS_TEST_KEY_PASSWORD"])
    ssl_port = free_port()
    extra = ["--listener", f"SSL://127.0.0.1:{ssl_port}", "--ssl-certfile", str(server.cert),
             "--ssl-keyfile", str(server.key), *option]
    with BrokerProcess(tmp_path / "data", extra_args=extra) as broker:
        config = {"bootstrap.servers": f"127.0.0.1:{ssl_port}", "security.protocol": "SSL",
                  "ssl.ca.location": str(ca_cert)}
        producer = confluent_kafka.Producer(config)
        producer.produce("encrypted-key", b"over TLS")
        assert producer.flush(CLIENT_TIMEOUT_S) == 0, broker.log_tail()


def test_an_encrypted_key_without_its_password_is_one_line(encrypted_key: tuple[Pem, Path], tmp_path: Path) -> None:
    server, _ = encrypted_key
    base = ["--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--listener", "SSL://127.0.0.1:0",
            "--ssl-certfile", str(server.cert), "--ssl-keyfile", str(server.key)]
    env = {k: v for k, v in os.environ.items() if k != "FLOWBUS_TEST_UNSET_KEY_PASSWORD"}
    missing = _broker_cli([*base, "-l", "warning"], env)
    assert (missing.returncode, missing.stderr) == (1, (
        "Error: the TLS key is encrypted: give its password with --ssl-key-password-file or --ssl-key-password-env "
        "(ssl.key.password.file= or ssl.key.password.env= in a --listen URL)\n"))
    unset = _broker_cli([*base, "--ssl-key-password-env", "FLOWBUS_TEST_UNSET_KEY_PASSWORD"], env)
    assert unset.returncode == 2
    assert unset.stderr.splitlines()[-1] == (
        "Error: ssl.key.password.env=FLOWBUS_TEST_UNSET_KEY_PASSWORD: the environment variable "
        "FLOWBUS_TEST_UNSET_KEY_PASSWORD is not set")


def test_a_listen_url_takes_the_key_password_from_a_file_or_the_environment(
        encrypted_key: tuple[Pem, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``flowbus worker --listen``'s URL: the embedded broker's TLS context loads the key."""
    server, _ = encrypted_key
    password_file = tmp_path / "key-password"
    password_file.write_text(KEY_PASSWORD + "\n")
    monkeypatch.setenv("FLOWBUS_TEST_KEY_PASSWORD", KEY_PASSWORD)
    base = f"SSL://127.0.0.1:0?ssl.certfile={server.cert}&ssl.keyfile={server.key}"
    for source in (f"ssl.key.password.file={password_file}", "ssl.key.password.env=FLOWBUS_TEST_KEY_PASSWORD"):
        tls = parse_listen_url(f"{base}&{source}").tls
        assert tls is not None and tls.key_password == KEY_PASSWORD
        tls.server_context()
    monkeypatch.delenv("FLOWBUS_TEST_KEY_PASSWORD")
    with pytest.raises(SecurityConfigError, match="FLOWBUS_TEST_KEY_PASSWORD is not set"):
        parse_listen_url(f"{base}&ssl.key.password.env=FLOWBUS_TEST_KEY_PASSWORD")


def test_a_key_password_in_a_listen_url_is_refused_on_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "secret_app.py").write_text(SIMPLE_APP)
    listen = "SSL://127.0.0.1:0?ssl.certfile=s.pem&ssl.keyfile=s.key&ssl.key.password=" + KEY_PASSWORD
    result = subprocess.run([*FLOWBUS, "worker", "-A", "secret_app:app", "--data-dir", str(tmp_path / "data"),
                             "--listen", listen], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (2, (
        "Error: --listen: ssl.key.password is not taken from the command line, where other users see it; "
        "use ssl.key.password.file=PATH or ssl.key.password.env=VARNAME in the URL instead\n"))
