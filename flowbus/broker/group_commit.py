"""Group commit: produce acknowledgements that must wait for fsync share one fsync per log.

With ``flush.messages=N`` (a topic's setting, or the broker's ``log.flush.interval.messages``
for every topic) the append that brings a log's unflushed record count to N must be fsynced
before its produce response is sent, as in Kafka, where that append flushes the log before it
returns. One fsync per produce request would cap a partition at the disk's fsync rate, so the
waits are grouped: each log that has waiters gets one flusher task, which runs
:meth:`PartitionLog.flush` on a worker thread (fsyncing everything appended so far), then
answers every waiter whose data that flush covered. Produces that arrive while an fsync runs
wait for the next one, which covers them all; so under load one fsync answers as many
requests as arrived during the previous one, and throughput follows the disk's bandwidth
rather than its fsync latency (the same idea as a database's group commit).

A waiter is answered with an error code: NONE once its data is durable, KAFKA_STORAGE_ERROR
when the fsync failed (the data is written but may not survive a machine crash; the files
stay dirty so the next flush retries), UNKNOWN_TOPIC_OR_PARTITION when the log was closed or
deleted before its data was fsynced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from flowbus.log import PartitionLog
from flowbus.log.errors import LogError
from flowbus.protocol.error_codes import ErrorCode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InternalAppend:
    """Where a batch the broker wrote itself landed (state records, markers, offsets).

    ``flush_required`` is set when the log's flush policy (``flush.messages``) asks for an
    fsync of this append: a writer that answers a client for it must first wait for
    :meth:`GroupCommit.wait` of ``end_offset`` (the group commit has already been asked to
    fsync it, so nothing else needs to start one).
    """

    topic: str
    partition: int
    base_offset: int
    #: One past the batch's last offset: the offset to wait for.
    end_offset: int
    flush_required: bool


@dataclass(slots=True)
class _LogWaiters:
    """The produces of one log waiting for durability, and its flusher task while it runs."""

    #: ``(offset, future)``: the future is answered once every offset below ``offset`` is fsynced.
    waiters: list[tuple[int, asyncio.Future[int]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class GroupCommit:
    """Answers "is everything below this offset fsynced?" for produce requests, one fsync per group.

    Use from the event loop only. Example::

        result = plog.append(batch, defer_flush=True)
        if result.flush_required:
            error = await group_commit.wait(plog, result.last_offset + 1)
    """

    def __init__(self) -> None:
        self._logs: dict[PartitionLog, _LogWaiters] = {}
        #: fsync passes run and requests they answered (for tests and benchmarks).
        self.flushes = 0
        self.answered = 0

    def wait(self, plog: PartitionLog, offset: int) -> asyncio.Future[int]:
        """A future answered with an error code once every record below ``offset`` is fsynced.

        Already answered (NONE) when the log's recovery point is at or past ``offset``.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if plog.recovery_point >= offset:
            future.set_result(ErrorCode.NONE)
            return future
        entry = self._logs.get(plog)
        if entry is None:
            entry = self._logs[plog] = _LogWaiters()
        entry.waiters.append((offset, future))
        if entry.task is None:
            entry.task = asyncio.get_running_loop().create_task(
                self._flush_while_waited(plog, entry), name=f"flowbus-group-commit-{plog.topic}-{plog.partition}"
            )
        return future

    async def _flush_while_waited(self, plog: PartitionLog, entry: _LogWaiters) -> None:
        """fsync the log while produces wait on it; each pass answers every waiter it found.

        Bounded: a pass takes the waiters present when it starts and answers all of them, so the
        loop ends as soon as no produce arrived during the last fsync.
        """
        loop = asyncio.get_running_loop()
        try:
            while entry.waiters:
                group, entry.waiters = entry.waiters, []
                error = ErrorCode.NONE
                try:
                    # Every waiter in ``group`` appended before this call, so the flush (which
                    # fsyncs up to the log end at its start) covers them all.
                    await loop.run_in_executor(None, plog.flush)
                except LogError as exc:
                    log.error("fsync of %s-%d failed: %s", plog.topic, plog.partition, exc)
                    error = ErrorCode(exc.errno) if exc.errno > 0 else ErrorCode.KAFKA_STORAGE_ERROR
                except Exception:
                    log.exception("fsync of %s-%d failed", plog.topic, plog.partition)
                    error = ErrorCode.KAFKA_STORAGE_ERROR
                self.flushes += 1
                durable = plog.recovery_point
                for offset, future in group:
                    if future.done():  # the request was cancelled (its connection closed)
                        continue
                    if error != ErrorCode.NONE:
                        future.set_result(error)
                    elif offset <= durable:
                        future.set_result(ErrorCode.NONE)
                    else:  # closed or deleted before the flush reached its data
                        future.set_result(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
                    self.answered += 1
        finally:
            entry.task = None
            if self._logs.get(plog) is entry:
                del self._logs[plog]
            for _, future in entry.waiters:  # only after a cancellation
                if not future.done():
                    future.set_result(ErrorCode.KAFKA_STORAGE_ERROR)

    @property
    def pending(self) -> int:
        """Produces waiting for an fsync right now."""
        return sum(len(entry.waiters) for entry in self._logs.values())

    async def close(self) -> None:
        """Let the running flusher tasks answer their waiters (call before closing the logs)."""
        for entry in list(self._logs.values()):  # bounded by the logs with waiters
            if entry.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(entry.task)
