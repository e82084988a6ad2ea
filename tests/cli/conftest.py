"""Fixtures for the CLI tests: one real ``flowbus broker`` for the package, a CliRunner helper."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result

from flowbus.cli.main import cli
from tests.support.broker_process import BrokerProcess


@pytest.fixture(scope="package")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker shared by every CLI test (tests use unique topic and group names)."""
    with BrokerProcess(tmp_path_factory.mktemp("cli-broker") / "data") as process:
        yield process


@pytest.fixture
def kafka_url(broker: BrokerProcess) -> str:
    return f"kafka://{broker.bootstrap}"


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique topic/group names, so tests sharing a broker never collide."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make


Invoke = Callable[..., Result]


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """Run ``flowbus ARGS...`` in-process; ``input`` is stdin (str or bytes).

    ``FLOWBUS_BROKER`` is cleared so a developer's environment cannot leak into a test.
    """
    monkeypatch.delenv("FLOWBUS_BROKER", raising=False)

    def run(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)

    return run
