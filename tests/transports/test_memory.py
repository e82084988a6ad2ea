"""The in-memory transport keeps the semantics the worker relies on: groups, hand-over after
revocation, pause/resume, commits and read_committed transactions."""

from __future__ import annotations

import asyncio

import pytest

from flowbus.transports.base import TopicPartition, TopicSpec
from flowbus.transports.errors import ProducerFencedError, TransactionError
from flowbus.transports.memory import MemoryTransport


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_produce_and_consume_in_order_with_keys_partitioned() -> None:
    async def main() -> None:
        t = MemoryTransport()
        await t.create_topics([TopicSpec("t", 3)])
        p = t.producer()
        metas = [await p.send("t", b"v%d" % i, b"k%d" % (i % 5)) for i in range(30)]
        assert {m.partition for m in metas} <= {0, 1, 2}
        same_key = {m.partition for i, m in enumerate(metas) if i % 5 == 1}
        assert len(same_key) == 1
        c = t.consumer("g")
        c.subscribe(["t"])
        got = await c.poll_batch(100, 0)
        assert len(got) == 30
        for part in range(3):
            offsets = [r.offset for r in got if r.partition == part]
            assert offsets == sorted(offsets)
        assert (await t.describe_topics(["t", "nope"]))["t"].partitions == 3

    run(main())


def test_group_splits_partitions_and_hands_over_after_revocation() -> None:
    async def main() -> None:
        t = MemoryTransport()
        await t.create_topics([TopicSpec("t", 4)])
        events: list[tuple[str, str, list[TopicPartition]]] = []

        def member(name: str):  # type: ignore[no-untyped-def]
            c = t.consumer("g")

            async def assigned(tps: list[TopicPartition]) -> None:
                events.append((name, "assigned", tps))

            async def revoked(tps: list[TopicPartition]) -> None:
                events.append((name, "revoked", tps))
                await c.commit({tp: 7 for tp in tps})

            c.subscribe(["t"], on_assigned=assigned, on_revoked=revoked)
            return c

        a = member("a")
        await a.poll_batch(10, 0)
        assert len(a.assignment()) == 4
        b = member("b")
        await b.poll_batch(10, 0)
        assert b.assignment() == []  # a still owns everything until it revokes
        await a.poll_batch(10, 0)
        await b.poll_batch(10, 0)
        assert len(a.assignment()) == 2 and len(b.assignment()) == 2
        assert ("a", "revoked", sorted(b.assignment())) in [(n, k, sorted(x)) for n, k, x in events]
        # b starts where a committed in its revocation callback
        assert b.position(b.assignment()[0]) == 7  # type: ignore[attr-defined]
        await a.close()
        await b.poll_batch(10, 0)
        assert len(b.assignment()) == 4

    run(main())


def test_pause_resume_and_commit() -> None:
    async def main() -> None:
        t = MemoryTransport()
        p = t.producer()
        for i in range(5):
            p.send_soon("t", b"%d" % i)
        c = t.consumer("g")
        c.subscribe(["t"])
        tp = TopicPartition("t", 0)
        await c.poll_batch(0, 0)
        c.pause([tp])
        assert await c.poll_batch(10, 0) == []
        c.resume([tp])
        assert len(await c.poll_batch(10, 0)) == 5
        await c.commit({tp: 5})
        assert await c.committed([tp]) == {tp: 5}
        assert await c.end_offsets([tp]) == {tp: 5}
        c.seek(tp, 2)
        assert [r.offset for r in await c.poll_batch(10, 0)] == [2, 3, 4]

    run(main())


def test_read_committed_sees_only_committed_transactions() -> None:
    async def main() -> None:
        t = MemoryTransport()
        tx = t.producer(transactional_id="tx")
        await tx.init_transactions()
        tx.begin_transaction()
        tx.send_soon("out", b"aborted")
        await tx.abort_transaction()
        tx.begin_transaction()
        tx.send_soon("out", b"committed")
        await tx.send_offsets_to_transaction({TopicPartition("in", 0): 3}, ("g", 0, 0))
        rc = t.consumer("rc", isolation_level="read_committed")
        rc.subscribe(["out"])
        assert await rc.poll_batch(10, 0) == []  # open transaction: nothing stable yet
        ru = t.consumer("ru")
        ru.subscribe(["out"])
        assert [r.value for r in await ru.poll_batch(10, 0)] == [b"aborted", b"committed"]
        await tx.commit_transaction()
        assert [r.value for r in await rc.poll_batch(10, 0)] == [b"committed"]
        assert t.broker.group("g").committed == {TopicPartition("in", 0): 3}

    run(main())


def test_a_new_producer_with_the_same_id_fences_and_aborts_the_old_one() -> None:
    async def main() -> None:
        t = MemoryTransport()
        old = t.producer(transactional_id="tx")
        await old.init_transactions()
        old.begin_transaction()
        old.send_soon("out", b"zombie")
        new = t.producer(transactional_id="tx")
        await new.init_transactions()
        with pytest.raises(ProducerFencedError):
            old.send_soon("out", b"late")
        assert t.broker.committed_records("out") == []
        with pytest.raises(TransactionError):
            t.producer().begin_transaction()

    run(main())
