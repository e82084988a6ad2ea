"""Fault injection into the worker's error paths, on the embedded broker core.

Each test runs a real worker on ``embedded://`` and makes exactly one transport call fail (by
patching that method of the embedded consumer or producer), then checks both that the fault
fired and what the worker did about it: what it logged, whether it kept running, and what ended
up committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flowbus
from flowbus import App
from flowbus.app_errors import AgentError
from flowbus.transports import transport_from_url
from flowbus.transports.base import TopicPartition
from flowbus.transports.embedded import EmbeddedConsumer, EmbeddedProducer
from flowbus.transports.errors import CommitError, TransactionError
from flowbus.worker import AGENT_RESTARTS_WITHOUT_PROGRESS_MAX

WAIT_S = 20.0


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def committed_offsets(url: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    transport = transport_from_url(url)
    await transport.start()
    try:
        consumer = transport.consumer(group)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        found = await consumer.committed(tps)
        await consumer.close()
        return {tp.partition: found[tp] for tp in tps}
    finally:
        await transport.close()


class CommitFaults:
    """Makes :meth:`EmbeddedConsumer.commit` raise ``CommitError`` while ``when()`` holds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, when: Callable[[], bool]) -> None:
        self.when = when
        self.raised = 0
        self.passed = 0
        original = EmbeddedConsumer.commit

        async def commit(consumer: EmbeddedConsumer, offsets: Any, *, asynchronous: bool = False) -> None:
            if offsets and self.when():
                self.raised += 1
                raise CommitError("injected: the group is rebalancing")
            if offsets:
                self.passed += 1
            await original(consumer, offsets, asynchronous=asynchronous)

        monkeypatch.setattr(EmbeddedConsumer, "commit", commit)


def _counting_app(tmp_path: Path, name: str, **settings: Any) -> tuple[App, Any, list[int]]:
    app = App(name, broker=f"embedded://{tmp_path / 'data'}", topic_partitions=2, **settings)
    src = app.topic(f"{name}-in", value_type=int)
    seen: list[int] = []

    @app.agent(src)
    async def count(stream: flowbus.Stream) -> None:
        async for value in stream:
            seen.append(value)

    return app, src, seen


def test_a_failed_periodic_commit_is_retried_at_the_next_one(tmp_path: Path, monkeypatch, caplog) -> None:
    app, src, seen = _counting_app(tmp_path, "periodic", commit_interval_ms=20)
    failing = {"on": True}
    faults = CommitFaults(monkeypatch, lambda: failing["on"])

    async def main() -> None:
        await app.create_topics()
        worker = asyncio.create_task(app.run())
        for i in range(50):
            await src.send(i, key=str(i))
        await wait_until(lambda: len(seen) == 50, "50 events processed")
        await wait_until(lambda: faults.raised >= 2, "two periodic commits to fail")
        assert not worker.done(), "a failed periodic commit must not stop the worker"
        assert app.worker is not None and not app.worker.committed
        failing["on"] = False
        await wait_until(lambda: faults.passed >= 1, "a periodic commit to succeed again")
        committed = await committed_offsets(app.broker, "periodic", src.name, 2)
        assert sum(committed.values()) == 50  # type: ignore[arg-type]
        app.stop()
        await worker
        await app.close()

    with caplog.at_level(logging.WARNING, logger="flowbus"):
        asyncio.run(main())
    assert "periodic commit failed, retrying at the next one: injected" in caplog.text


def test_a_failed_final_commit_is_logged_and_the_worker_still_closes(tmp_path: Path, monkeypatch, caplog) -> None:
    app, src, seen = _counting_app(tmp_path, "final", commit_interval_ms=3_600_000)
    faults = CommitFaults(monkeypatch, lambda: app.worker is not None and app.worker.closing)

    async def main() -> None:
        await app.create_topics()
        worker = asyncio.create_task(app.run())
        for i in range(20):
            await src.send(i, key=str(i))
        await wait_until(lambda: len(seen) == 20, "20 events processed")
        app.stop()
        await worker  # the failure is logged, not raised
        await app.close()
        assert faults.raised == 1 and faults.passed == 0
        # Nothing was committed: a restart replays all 20 (at least once).
        assert await committed_offsets(app.broker, "final", src.name, 2) == {0: None, 1: None}

    with caplog.at_level(logging.ERROR, logger="flowbus"):
        asyncio.run(main())
    failures = [r for r in caplog.records if r.getMessage() == "final commit failed"]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert failures[0].exc_info[0] is CommitError


def test_a_failed_commit_on_revocation_leaves_replay_to_the_new_owner(tmp_path: Path, monkeypatch, caplog) -> None:
    first, src, seen_first = _counting_app(tmp_path, "revoke", commit_interval_ms=3_600_000)
    second, _, seen_second = _counting_app(tmp_path, "revoke", commit_interval_ms=3_600_000)
    faults = CommitFaults(monkeypatch, lambda: first.worker is not None and first.worker.revoking)

    async def main() -> None:
        await first.create_topics()
        run_first = asyncio.create_task(first.run())
        for i in range(40):
            await src.send(i, key=str(i))
        await wait_until(lambda: len(seen_first) == 40, "the first worker to process all 40")
        run_second = asyncio.create_task(second.run())
        await wait_until(lambda: faults.raised >= 1, "the revocation commit to fail")
        await wait_until(lambda: second.worker is not None and len(second.worker.assigned) >= 1,
                         "the second worker to get a partition")
        assert not run_first.done(), "a failed revocation commit must not stop the worker"
        # The partitions the second worker took were never committed: it replays them.
        await wait_until(lambda: len(seen_second) > 0, "the new owner to replay its partitions")
        first.stop()
        second.stop()
        await asyncio.gather(run_first, run_second)
        await first.close()
        await second.close()

    with caplog.at_level(logging.WARNING, logger="flowbus"):
        asyncio.run(main())
    assert "commit on revocation failed: injected" in caplog.text
    assert sorted(set(seen_first) | set(seen_second)) == list(range(40))


def test_an_agent_that_returns_is_reported_and_nothing_after_its_last_ack_is_committed(tmp_path: Path, caplog) -> None:
    app = App("returns", broker=f"embedded://{tmp_path / 'data'}", topic_partitions=1, commit_interval_ms=20)
    src = app.topic("returns-in", value_type=int)
    seen: list[int] = []

    @app.agent(src)
    async def one_and_done(stream: flowbus.Stream) -> None:
        async for value in stream:
            seen.append(value)
            return

    async def main() -> None:
        await app.create_topics()
        worker = asyncio.create_task(app.run())
        for i in range(5):
            await src.send(i, key=str(i))
        await wait_until(lambda: "one_and_done returned; events of returns-in" in caplog.text, "the early return to be reported")
        app.stop()
        await worker  # the final commit at shutdown commits all that is committable
        await app.close()
        # The event the agent held when it returned was never acknowledged, so nothing of the
        # partition is committed past its start: a restart processes all five again.
        assert await committed_offsets(app.broker, "returns", src.name, 1) == {0: 0}

    with caplog.at_level(logging.ERROR, logger="flowbus"):
        asyncio.run(main())
    assert seen == [0]
    assert "events of returns-in stay unprocessed until restart" in caplog.text


def test_an_agent_failing_without_progress_stops_the_worker_after_the_restart_limit(tmp_path: Path) -> None:
    app = App("restarts", broker=f"embedded://{tmp_path / 'data'}", topic_partitions=1, error_policy="log")
    src = app.topic("restarts-in", value_type=int)
    starts: list[int] = []

    @app.agent(src)
    async def broken(stream: flowbus.Stream) -> None:
        starts.append(1)
        raise RuntimeError("fails before reading anything")

    async def main() -> None:
        await app.create_topics()
        try:
            await asyncio.wait_for(app.run(), WAIT_S)
        finally:
            await app.close()

    with pytest.raises(AgentError) as info:
        asyncio.run(main())
    assert len(starts) == AGENT_RESTARTS_WITHOUT_PROGRESS_MAX
    assert isinstance(info.value.__cause__, RuntimeError)


async def read_committed_values(url: str, topic: str, partitions: int) -> tuple[list[bytes | None], int]:
    """What a read_committed reader sees in ``topic`` now (assigned, from the start), and the
    topic's total end offset (aborted records and markers included)."""
    transport = transport_from_url(url)
    await transport.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer = transport.consumer(None, isolation_level="read_committed")
        consumer.assign(tps, {tp: 0 for tp in tps})
        ends = await consumer.end_offsets(tps)
        values: list[bytes | None] = []
        deadline = time.monotonic() + WAIT_S
        while not all((consumer.position(tp) or 0) >= ends[tp] for tp in tps) and time.monotonic() < deadline:
            values.extend(r.value for r in await consumer.poll_batch(1000, 50))
        await consumer.close()
        return values, sum(ends.values())
    finally:
        await transport.close()


def _copying_app(tmp_path: Path, name: str, **settings: Any) -> tuple[App, Any, Any, list[int]]:
    settings = {"topic_partitions": 1, "commit_interval_ms": 3_600_000, **settings}
    app = App(name, broker=f"embedded://{tmp_path / 'data'}", processing_guarantee="exactly_once", **settings)
    src = app.topic(f"{name}-in", value_type=int)
    out = app.topic(f"{name}-out", value_type=int)
    seen: list[int] = []

    @app.agent(src, sink=[out])
    async def copy(stream: flowbus.Stream) -> Any:
        async for value in stream:
            seen.append(value)
            yield value

    return app, src, out, seen


def test_a_failed_final_transaction_commit_aborts_it(tmp_path: Path, monkeypatch, caplog) -> None:
    app, src, out, seen = _copying_app(tmp_path, "eos-final")
    calls: dict[str, int] = {"commit": 0, "abort": 0}
    original_abort = EmbeddedProducer.abort_transaction

    async def commit_transaction(producer: EmbeddedProducer) -> None:
        calls["commit"] += 1
        raise TransactionError("injected: EndTxn failed")

    async def abort_transaction(producer: EmbeddedProducer) -> None:
        calls["abort"] += 1
        await original_abort(producer)

    async def main() -> None:
        await app.create_topics()
        worker = asyncio.create_task(app.run())
        for i in range(10):
            await src.send(i, key=str(i))
        await wait_until(lambda: len(seen) == 10, "10 events processed")
        monkeypatch.setattr(EmbeddedProducer, "commit_transaction", commit_transaction)
        monkeypatch.setattr(EmbeddedProducer, "abort_transaction", abort_transaction)
        app.stop()
        await worker
        await app.close()
        monkeypatch.undo()
        assert calls["commit"] == 1 and calls["abort"] >= 1
        # The outputs reached the log (10 records and the abort marker) but never become
        # visible, and the inputs stay uncommitted.
        assert await read_committed_values(app.broker, out.name, 1) == ([], 11)
        assert (await committed_offsets(app.broker, "eos-final", src.name, 1))[0] in (None, 0)

    with caplog.at_level(logging.ERROR, logger="flowbus"):
        asyncio.run(main())
    failures = [r for r in caplog.records if r.getMessage() == "final commit failed"]
    assert len(failures) == 1 and failures[0].exc_info[0] is TransactionError  # type: ignore[index]


def test_a_failed_abort_at_shutdown_still_closes_the_worker(tmp_path: Path, monkeypatch) -> None:
    app, src, out, seen = _copying_app(tmp_path, "eos-abort")
    aborts: list[int] = []

    async def commit_transaction(producer: EmbeddedProducer) -> None:
        raise TransactionError("injected: EndTxn(commit) failed")

    async def abort_transaction(producer: EmbeddedProducer) -> None:
        aborts.append(1)
        raise TransactionError("injected: EndTxn(abort) failed")

    async def main() -> BaseException | None:
        await app.create_topics()
        worker = asyncio.create_task(app.run())
        for i in range(10):
            await src.send(i, key=str(i))
        await wait_until(lambda: len(seen) == 10, "10 events processed")
        monkeypatch.setattr(EmbeddedProducer, "commit_transaction", commit_transaction)
        monkeypatch.setattr(EmbeddedProducer, "abort_transaction", abort_transaction)
        app.stop()
        try:
            await worker
            outcome = None
        except BaseException as exc:  # noqa: BLE001 - what the worker raised is the subject
            outcome = exc
        monkeypatch.undo()
        assert app.worker is not None and app.worker.closing
        await app.close()
        # The transaction was never committed: its outputs are not visible.
        values, end = await read_committed_values(app.broker, out.name, 1)
        assert values == [] and end >= 10
        return outcome

    outcome = asyncio.run(main())
    assert aborts, "the injected abort failure never fired"
    # The abort failure surfaces from run() once everything is closed; the coordinator's
    # transaction timeout ends the open transaction.
    assert isinstance(outcome, TransactionError) and "EndTxn(abort)" in str(outcome)


def test_a_failed_periodic_transaction_commit_aborts_and_replays_from_the_committed_offsets(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """Under exactly-once, a periodic commit whose EndTxn fails (not fenced) must not stop the
    worker: the transaction is aborted, the worker goes on from the committed offsets, and every
    input still has exactly one visible output."""
    app, src, out, seen = _copying_app(tmp_path, "eos-periodic", topic_partitions=2, commit_interval_ms=50)
    original = EmbeddedProducer.commit_transaction
    injected: list[int] = []

    async def commit_transaction(producer: EmbeddedProducer) -> None:
        if not injected and producer._txn_partitions:  # the first commit that carries outputs
            injected.append(1)
            raise TransactionError("injected: EndTxn(commit) failed")
        await original(producer)

    async def main() -> None:
        await app.create_topics()
        monkeypatch.setattr(EmbeddedProducer, "commit_transaction", commit_transaction)
        worker = asyncio.create_task(app.run())
        for i in range(20):
            await src.send(i, key=str(i))
        await wait_until(lambda: bool(injected), "the injected commit failure")
        for i in range(20, 40):
            await src.send(i, key=str(i))
        assert app.worker is not None
        running = app.worker

        async def visible() -> list[int]:
            values, _ = await read_committed_values(app.broker, out.name, 2)
            return sorted(int(v or b"-1") for v in values)

        deadline = time.monotonic() + WAIT_S
        while (found := await visible()) != list(range(40)):
            assert not worker.done(), "a failed periodic transaction commit stopped the worker"
            assert time.monotonic() < deadline, f"visible outputs: {found}"
            await asyncio.sleep(0.1)
        assert running.failed_transactions == 1
        assert len(seen) > 40, "the aborted transaction's inputs were processed again"
        app.stop()
        await worker
        await app.close()

    with caplog.at_level(logging.WARNING, logger="flowbus"):
        asyncio.run(main())
    assert "the transaction failed to commit: injected: EndTxn(commit) failed" in caplog.text
