"""KafkaJS logging in with SCRAM against a real ``flowbus broker`` process (issue 14, item 5).

One broker serves a SASL_SSL listener (a throwaway CA, ``tests/support/certs.py``) and a
SASL_PLAINTEXT one, both on free 127.0.0.1 ports; its users are created offline with
``flowbus users add``. KafkaJS logs in with SCRAM-SHA-512 over SASL_SSL and SCRAM-SHA-256 over
SASL_PLAINTEXT, creates a topic, produces, consumes in a group and commits, and a restarted member
resumes at the commit. A wrong password and an unknown user get KafkaJS's
``KafkaJSSASLAuthenticationError``.

The scenarios are ``sasl-round-trip`` and ``sasl-refused`` in tests/broker/kafkajs/scenarios.js;
the password reaches node in an environment variable, never in argv. Node and npm as for
test_kafkajs.py (its ``node`` fixture runs ``npm ci`` when needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.broker import test_kafkajs as kafkajs
from tests.support.broker_process import BrokerProcess, free_port
from tests.support.certs import TestCa

pytestmark = pytest.mark.timeout(120)

#: The session fixture of test_kafkajs: node, with the pinned packages installed.
node = kafkajs.node

PASSWORD = "kafkajs-secret-5"
#: What scenarios.js reads the password from (its PASSWORD_VARIABLE).
PASSWORD_VARIABLE = "KAFKAJS_SASL_PASSWORD"
USERS_ADD_TIMEOUT_S = 60
RECORDS = 6
#: The broker's log line for each refused login (one per connection).
FAILED_LOGIN_TEXT = "authentication failed: "
LOG_WAIT_S = 10.0
LOG_SETTLE_S = 0.3


@dataclass(frozen=True)
class Listener:
    """One secured listener and how KafkaJS is told to log in to it."""

    name: str
    port: int
    mechanism: str
    ca_file: Path | None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def security(self, username: str = "alice") -> dict[str, Any]:
        """The ``security`` argument of scenarios.js (the password goes separately)."""
        security: dict[str, Any] = {"sasl": self.mechanism, "username": username}
        if self.ca_file is not None:
            security["caFile"] = str(self.ca_file)
        return security


@dataclass(frozen=True)
class SecuredBroker:
    broker: BrokerProcess
    sasl_ssl: Listener
    sasl_plaintext: Listener


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    tmp = tmp_path_factory.mktemp("kafkajs-security")
    ca = TestCa(tmp / "certs")
    server = ca.issue("server", "localhost", server=True)
    data_dir = tmp / "data"
    # The default: SCRAM-SHA-256 and SCRAM-SHA-512 keys; the password on stdin, not in argv.
    added = subprocess.run(
        [sys.executable, "-m", "flowbus", "users", "add", "alice", "--password-file", "-",
         "--data-dir", str(data_dir)],
        input=PASSWORD, capture_output=True, text=True, timeout=USERS_ADD_TIMEOUT_S, check=False,
    )
    assert added.returncode == 0, added.stderr
    sasl_ssl = Listener("SASL_SSL", free_port(), "scram-sha-512", ca.pem.cert)
    sasl_plaintext = Listener("SASL_PLAINTEXT", free_port(), "scram-sha-256", None)
    extra = [
        "--group-initial-rebalance-delay-ms", "0",
        "--listener", f"SASL_SSL://127.0.0.1:{sasl_ssl.port}",
        "--listener", f"SASL_PLAINTEXT://127.0.0.1:{sasl_plaintext.port}",
        "--ssl-certfile", str(server.cert), "--ssl-keyfile", str(server.key),
    ]
    with BrokerProcess(data_dir, extra_args=extra) as broker:
        yield SecuredBroker(broker, sasl_ssl, sasl_plaintext)


def run_secured(
    node: str, broker: BrokerProcess, listener: Listener, scenario: str, password: str,
    **args: Any,
) -> dict[str, Any]:
    """Run one scenario on ``listener``, the password in the environment; its JSON."""
    run = subprocess.run(
        [node, str(kafkajs.SCENARIOS), scenario, listener.bootstrap, json.dumps(args)],
        cwd=kafkajs.KAFKAJS_DIR,
        env=dict(os.environ, KAFKAJS_NO_PARTITIONER_WARNING="1", **{PASSWORD_VARIABLE: password}),
        capture_output=True,
        text=True,
        timeout=kafkajs.SCENARIO_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, (
        f"{scenario} on {listener.name} failed:\n{run.stderr[-4000:]}\n--- broker log:\n{broker.log_tail()}"
    )
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def refusals_logged(broker: BrokerProcess, expected: int) -> int:
    """How many refused logins the broker logged, once ``expected`` are there or after a bound
    wait: the line is written as the connection closes, which can be just after the client saw
    the answer; then LOG_SETTLE_S more, to count any that should not be there."""
    deadline = time.monotonic() + LOG_WAIT_S
    while broker.log_text().count(FAILED_LOGIN_TEXT) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(LOG_SETTLE_S)
    return broker.log_text().count(FAILED_LOGIN_TEXT)


LISTENERS = ["sasl_ssl", "sasl_plaintext"]


@pytest.mark.parametrize("which", LISTENERS)
def test_scram_login_produce_consume_and_commit(
    node: str, secured_broker: SecuredBroker, unique: Callable[[str], str], which: str
) -> None:
    listener: Listener = getattr(secured_broker, which)
    topic, group = unique(f"kjs-{which}"), unique(f"kjs-{which}")
    out = run_secured(node, secured_broker.broker, listener, "sasl-round-trip", PASSWORD,
                      security=listener.security(), topic=topic, group=group, count=RECORDS)
    assert out["created"] == {"ok": True}
    # The listener advertises itself: KafkaJS stays on the port (and protocol) it bootstrapped on.
    assert out["cluster"] == {"ok": [{"nodeId": 0, "host": "127.0.0.1", "port": listener.port}]}
    assert sorted((r["partition"], r["baseOffset"], r["errorCode"]) for r in out["sent"]["ok"]) == [
        (0, 0, 0), (1, 0, 0)]
    consumed = sorted((r["partition"], r["offset"], r["key"], r["value"]) for r in out["consumed"])
    assert consumed == sorted((i % 2, i // 2, f"k-{i}", f"sasl-{i}") for i in range(RECORDS))
    assert out["commit"] == {"ok": None}
    assert out["committed"] == {"ok": {"0": RECORDS // 2, "1": RECORDS // 2}}
    # A new member of the group starts at the commit: the two later records and nothing else.
    assert sorted((r["partition"], r["offset"], r["value"]) for r in out["resumed"]) == [
        (0, RECORDS // 2, "after-0"), (1, RECORDS // 2, "after-1")]
    log_text = secured_broker.broker.log_text()
    assert f"on listener {listener.name} authenticated as User:alice" in log_text
    assert PASSWORD not in log_text


@pytest.mark.parametrize("which", LISTENERS)
def test_a_wrong_password_is_kafkajs_authentication_error(
    node: str, secured_broker: SecuredBroker, which: str
) -> None:
    listener: Listener = getattr(secured_broker, which)
    digest = listener.mechanism.upper().removeprefix("SCRAM-").replace("-", "")  # SHA512
    expected = (f"SASL SCRAM {digest} authentication failed: Authentication failed: invalid "
                f"credentials with SASL mechanism {listener.mechanism.upper()}")
    for username, password in (("alice", "not-the-password"), ("mallory", PASSWORD)):
        refusals_before = secured_broker.broker.log_text().count(FAILED_LOGIN_TEXT)
        out = run_secured(node, secured_broker.broker, listener, "sasl-refused", password,
                          security=listener.security(username))
        for client in ("admin", "producer"):
            error = out[client]["error"]
            assert error["name"] == "KafkaJSSASLAuthenticationError", (client, error)
            assert error["message"] == expected, (client, error)
        # Non-retriable: one login attempt per client, not one per retry.
        assert refusals_logged(secured_broker.broker, refusals_before + 2) == refusals_before + 2
    log_text = secured_broker.broker.log_text()
    assert f"{listener.mechanism.upper()} authentication failed: wrong proof (user 'alice')" in log_text
    assert "not-the-password" not in log_text
