"""Fixtures: a real ``flowbus broker`` process on a free 127.0.0.1 port."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker_process import BrokerProcess


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker shared by a module's tests (tests use unique topic and group names)."""
    base = tmp_path_factory.mktemp("broker")
    with BrokerProcess(base / "data") as process:
        yield process


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker of the test's own, for tests that kill or restart it."""
    with BrokerProcess(tmp_path / "data") as process:
        yield process


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique topic/group names, so tests sharing a broker never collide."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make
