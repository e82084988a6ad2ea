"""``flowbus tables list|get`` on window stores: a key's open windows and sessions, read from the
local partition databases and from the changelog, after a worker on the embedded broker stopped."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus.cli.worker import load_app
from flowbus.transports.base import TopicSpec
from flowbus.transports.embedded import EmbeddedTransport
from tests.cli.conftest import Invoke

S = 1_000
NOW_MS = time.time_ns() // 1_000_000
BASE = NOW_MS - NOW_MS % (10 * S) - 600 * S
APP_MODULE = textwrap.dedent(
    """
    from flowbus import App

    app = App("wt", broker={broker!r}, commit_interval_ms=50, window_idle_ms=None)
    clicks = app.topic("clicks", key_type=str, partitions=2)
    app.stream(clicks).tumbling_window(10_000, name="per-10s").count().final()
    app.stream(clicks).session_window(5_000, name="visits").count().final()
    """
)


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"window_tables_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP_MODULE.format(broker=f"embedded://{tmp_path / 'data'}"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FLOWBUS_STATE_DIR", raising=False)
    yield f"{name}:app"
    sys.modules.pop(name, None)


def run_app(tmp_path: Path, app_spec: str, clicks: list[tuple[str, int]]) -> None:
    app = load_app(app_spec)

    async def main() -> None:
        transport = EmbeddedTransport(f"embedded://{tmp_path / 'data'}")
        await transport.start()
        await transport.create_topics([TopicSpec("clicks", 2)])
        producer = transport.producer()
        for user, ts in clicks:
            producer.send_soon("clicks", b"{}", user.encode(), timestamp_ms=ts)
        await producer.close()
        await transport.close()
        worker = app.make_worker()
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        while worker.events_in < len(clicks):
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await worker.commit()
        worker.stop()
        await task

    asyncio.run(main())


def test_get_prints_a_keys_open_windows_and_sessions(tmp_path: Path, app_module: str, invoke: Invoke) -> None:
    run_app(tmp_path, app_module, [("ann", BASE + 1 * S), ("ann", BASE + 2 * S), ("ann", BASE + 12 * S), ("bob", BASE + 3 * S)])
    for source in ("local", "changelog"):
        windows = invoke("tables", "get", "-A", app_module, "per-10s", "ann", "--from", source)
        assert windows.exit_code == 0, windows.output
        lines = [json.loads(line) for line in windows.output.splitlines()]
        # [0, 10 s) of ann's partition closed when 12 s arrived: only [10 s, 20 s) is open
        assert lines == [{"start": BASE + 10 * S, "end": BASE + 20 * S, "value": 1}], source
        sessions = invoke("tables", "get", "-A", app_module, "visits", "ann", "--from", source)
        assert [json.loads(line) for line in sessions.output.splitlines()] == [
            {"start": BASE + 12 * S, "end": BASE + 12 * S + 1, "value": 1}
        ], source
        missing = invoke("tables", "get", "-A", app_module, "per-10s", "carol", "--from", source)
        assert missing.exit_code == 1 and "not found" in missing.output
    listed = invoke("tables", "list", "-A", app_module)
    assert "tumbling window" in listed.output and "session window" in listed.output
