"""Secrets in ``kafka://`` URLs: the ``.file`` and ``.env`` forms, and masking (issue 14, item 4).

A URL names where a secret is (a file, an environment variable) rather than the secret itself,
so the command line that carries the URL never shows it; error messages that quote a URL mask
every secret written into it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flowbus.transports.errors import TransportError
from flowbus.transports.kafka import (
    SECRET_PARAMETERS,
    client_config_from_url,
    inline_secrets,
    redact_url,
)


@pytest.mark.parametrize("name", SECRET_PARAMETERS)
def test_each_secret_has_a_file_and_an_env_form(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\r\nsecond line is not read\n")
    monkeypatch.setenv("FLOWBUS_TEST_SECRET", "from-env")
    assert client_config_from_url(f"kafka://h:1?{name}.file={secret_file}")[name] == "from-file"
    config = client_config_from_url(f"kafka://h:1?{name}.env=FLOWBUS_TEST_SECRET")
    assert config[name] == "from-env"
    assert f"{name}.env" not in config, "the .env form is ours, not a librdkafka setting"


def test_the_env_form_of_the_sasl_password_makes_the_url_sasl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWBUS_TEST_SECRET", "pw")
    config = client_config_from_url("kafkas://app@h:1?sasl.password.env=FLOWBUS_TEST_SECRET")
    assert config == {"bootstrap.servers": "h:1", "sasl.username": "app", "sasl.password": "pw",
                      "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}


def test_an_unset_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWBUS_TEST_MISSING", raising=False)
    with pytest.raises(TransportError) as missing:
        client_config_from_url("kafka://h:1?sasl.username=a&sasl.password.env=FLOWBUS_TEST_MISSING")
    assert str(missing.value) == (
        "sasl.password.env=FLOWBUS_TEST_MISSING: the environment variable FLOWBUS_TEST_MISSING is not set"
    )


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError) as missing:
        client_config_from_url(f"kafka://h:1?ssl.key.password.file={tmp_path / 'nope'}")
    assert str(missing.value) == (
        f"ssl.key.password.file={tmp_path / 'nope'}: cannot read the file: No such file or directory"
    )


def test_an_empty_variable_is_an_empty_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set but empty is not missing: librdkafka then reports the failed login itself."""
    monkeypatch.setenv("FLOWBUS_TEST_EMPTY", "")
    assert client_config_from_url("kafka://h:1?sasl.password.env=FLOWBUS_TEST_EMPTY")["sasl.password"] == ""


@pytest.mark.parametrize(
    ("url", "found"),
    [
        ("kafka://h:1", []),
        ("kafka://alice@h:1", []),
        ("kafka://alice:pw@h:1", ["sasl.password"]),
        ("kafka://h:1?sasl.password=pw", ["sasl.password"]),
        ("kafka://h:1?sasl%2Epassword=pw", ["sasl.password"]),
        ("kafka://h:1?sasl.password.file=/p&sasl.password.env=X&ssl.key.password.file=/k", []),
        ("kafka://h:1?ssl.key.password=k&sasl.oauthbearer.client.secret=s",
         ["ssl.key.password", "sasl.oauthbearer.client.secret"]),
        ("kafkas://h:1?ssl.keystore.password=k", ["ssl.keystore.password"]),
    ],
)
def test_inline_secrets_are_found(url: str, found: list[str]) -> None:
    assert inline_secrets(url) == found


def test_every_secret_is_masked_and_sources_are_not() -> None:
    url = ("kafka://a:pw1@h:1?sasl.password=pw2&ssl.key.password=pw3&ssl.keystore.password=pw4"
           "&sasl.oauthbearer.client.secret=pw5&sasl.password.env=VAR&sasl.password.file=/run/secrets/a")
    shown = redact_url(url)
    assert shown == ("kafka://a:***@h:1?sasl.password=***&ssl.key.password=***&ssl.keystore.password=***"
                     "&sasl.oauthbearer.client.secret=***&sasl.password.env=VAR&sasl.password.file=/run/secrets/a")
    with pytest.raises(TransportError) as bad:
        client_config_from_url(url + "&oops")
    assert not any(f"pw{i}" in str(bad.value) for i in range(1, 6))
