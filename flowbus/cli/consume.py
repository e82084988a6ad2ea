"""``flowbus consume TOPIC``: print a topic's records, one value per line.

Without ``--group`` it reads every partition directly (no group, no commits, nothing left behind
on the broker). With ``--group G`` it joins group G like any consumer and commits, after each
batch is written to stdout, the offsets of exactly the records written out — so a ``--max`` run
that stops in the middle of a batch leaves the rest for the next reader of the group, and on a
pipe only what the reader took out of it counts (``| head -2`` commits nothing it dropped).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import select
import stat
import struct
import sys
import termios
import time
from collections.abc import Callable
from typing import BinaryIO

import click

from flowbus.cli.common import (
    TIMEOUT_S_DEFAULT,
    broker_option,
    connect,
    require_topic,
    run,
    stop_signals,
)
from flowbus.transports import Consumer, Record, TopicPartition
from flowbus.transports.errors import CommitError

POLL_RECORDS_MAX = 500
"""Records asked for per poll (and so written and committed per batch)."""
POLL_TIMEOUT_MS = 200
PIPE_READ_CONFIRM_S = 0.1
"""How long a pipe's reader must still be there after taking a record for it to count as read."""
PIPE_SETTLE_S = 2.0
"""At exit, how long to wait for a pipe's reader to take the records still in the pipe."""
PIPE_CHECK_INTERVAL_S = 0.02
"""A poll waits at most this long, so Ctrl-C, SIGTERM and --timeout-s are noticed quickly."""
CLIENT_ID = "flowbus-consume"
"""The client id a ``--group`` member shows in ``flowbus groups describe``."""


NO_HEADERS = b"NO_HEADERS"
"""What ``--print-headers`` prints for a record without headers (as Kafka's console consumer does)."""


def _headers_text(record: Record) -> bytes:
    """``name:value,name:value`` (a null value prints as ``null``), as Kafka's console consumer
    prints headers with ``print.headers=true``."""
    if not record.headers:
        return NO_HEADERS
    return b",".join(
        name.encode() + b":" + (b"null" if value is None else value) for name, value in record.headers
    )


def _line(record: Record, separator: bytes | None, print_key: bool, print_headers: bool) -> bytes:
    """One record as raw bytes: ``[HEADERS<sep>][KEY<sep>]VALUE\n``; a null key or value prints as nothing."""
    value = record.value or b""
    if not (print_key or print_headers):
        return value + b"\n"
    assert separator is not None
    fields = []
    if print_headers:
        fields.append(_headers_text(record))
    if print_key:
        fields.append(record.key or b"")
    fields.append(value)
    return separator.join(fields) + b"\n"


class Output:
    """Where the records go, and which of them the reader has taken.

    A file or a terminal has everything written once ``flush`` returns. A pipe does not: the
    reader may exit without reading what sits in the pipe's buffer (``flowbus consume t | head -2``
    leaves up to 64 KiB there). So on a pipe, a record counts as written out only once the reader
    has taken its last byte out of the pipe (``FIONREAD``: bytes still in it) and is still there
    :data:`PIPE_READ_CONFIRM_S` later (its read end not closed: ``POLLERR`` on ours); ``head`` reads
    a whole chunk and exits at once, so what it read and dropped is not confirmed either.
    """

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.fd: int | None = None
        try:
            fd = out.fileno()
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                self.fd = fd
        except (OSError, ValueError, AttributeError):
            pass  # not a real file (a test runner's buffer): written means written out
        self.written_bytes = 0
        self.pending: collections.deque[tuple[int, float, Record]] = collections.deque()
        """On a pipe, the records written and not yet confirmed read: (end byte, time, record)."""

    @property
    def is_pipe(self) -> bool:
        return self.fd is not None

    def write(self, records: list[Record], line: Callable[[Record], bytes]) -> list[Record]:
        """Write ``records``; returns those already known written out (all of them, unless a pipe)."""
        lines = [line(r) for r in records]
        self.out.write(b"".join(lines))
        self.out.flush()
        if self.fd is None:
            return records
        now = time.monotonic()
        for record, data in zip(records, lines, strict=True):
            self.written_bytes += len(data)
            self.pending.append((self.written_bytes, now, record))
        return []

    def abandon(self) -> None:
        """The reader went away: nothing pending counts as read, and stdout is /dev/null now."""
        _silence_stdout()
        self.pending.clear()
        self.fd = None

    def reader_gone(self) -> bool:
        if self.fd is None:
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))

    def confirmed(self) -> list[Record]:
        """The pending records the reader has taken and outlived by :data:`PIPE_READ_CONFIRM_S`
        (none once the reader is gone: what it took last may have been dropped)."""
        if self.fd is None or not self.pending or self.reader_gone():
            return []
        try:
            unread = struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return []  # cannot tell what was read: commit nothing rather than too much
        taken = self.written_bytes - unread
        before = time.monotonic() - PIPE_READ_CONFIRM_S
        out = []
        while self.pending and self.pending[0][0] <= taken and self.pending[0][1] <= before:
            out.append(self.pending.popleft()[2])
        return out

    async def settle(self, timeout_s: float) -> list[Record]:
        """At the end: wait (at most ``timeout_s``) for the reader to take what is pending."""
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while self.pending and not self.reader_gone():
            out.extend(self.confirmed())
            if not self.pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(PIPE_CHECK_INTERVAL_S)
        return out


def _silence_stdout() -> None:
    """After a closed pipe (``flowbus consume t | head``), point stdout at /dev/null so Python's
    final flush does not print a BrokenPipeError on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (a test runner's buffer): nothing to silence


async def _commit(consumer: Consumer, records: list[Record]) -> None:
    """Commit the offset after the last written record of each partition.

    A failed commit (the group rebalancing meanwhile) is reported and reading goes on: the
    records stay uncommitted and the group reads them again, which is what at-least-once means.
    """
    if not records:
        return
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        offsets[TopicPartition(r.topic, r.partition)] = r.offset + 1
    try:
        await consumer.commit(offsets)
    except CommitError as exc:
        click.echo(f"warning: commit failed, these records will be read again: {exc}", err=True)


async def _consume(
    broker_url: str, topic: str, from_beginning: bool, group: str | None, max_records: int | None,
    idle_timeout_s: float | None, line: Callable[[Record], bytes], out: BinaryIO,
) -> int:
    """Write records to ``out`` until a limit or a signal; returns how many were written.

    With a group, only the records written out are committed (see :class:`Output`)."""
    output = Output(out)
    written = 0
    connect_timeout_s = idle_timeout_s if idle_timeout_s is not None else TIMEOUT_S_DEFAULT
    async with connect(broker_url, timeout_s=connect_timeout_s) as transport:
        description = await require_topic(transport, topic)
        consumer = transport.consumer(
            group, auto_offset_reset="earliest" if from_beginning else "latest", client_id=CLIENT_ID
        )
        if group is not None:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, p) for p in range(description.partitions)])
        stop = asyncio.Event()
        last_record_s = time.monotonic()
        assigned = False
        with stop_signals(stop.set):
            try:
                while not stop.is_set() and (max_records is None or written < max_records):
                    wanted = POLL_RECORDS_MAX if max_records is None else min(POLL_RECORDS_MAX, max_records - written)
                    records = (await consumer.poll_batch(wanted, POLL_TIMEOUT_MS))[:wanted]
                    if not assigned and consumer.assignment():
                        # Joining a group can take seconds (a broker's initial rebalance delay):
                        # idleness counts from when there is something to read.
                        assigned, last_record_s = True, time.monotonic()
                    if group is not None and output.is_pipe:
                        if output.reader_gone():
                            output.abandon()
                            break  # what the reader did not confirm reading stays uncommitted
                        await _commit(consumer, output.confirmed())
                    if not records:
                        if idle_timeout_s is not None and time.monotonic() - last_record_s >= idle_timeout_s:
                            break
                        continue
                    last_record_s = time.monotonic()
                    try:
                        done = output.write(records, line)
                    except BrokenPipeError:
                        output.abandon()
                        break  # the reader went away; what it did not read is not committed
                    written += len(records)
                    if group is not None:
                        await _commit(consumer, done)
                if group is not None:
                    await _commit(consumer, await output.settle(PIPE_SETTLE_S))
            finally:
                await consumer.close()
    return written


@click.command("consume")
@click.argument("topic")
@click.option(
    "--from-beginning", is_flag=True,
    help="Start at the oldest record (default: only records written from now on). With --group "
    "this applies only where the group has no committed offset yet.",
)
@click.option(
    "--group", "-g", default=None, metavar="GROUP",
    help="Read as a member of consumer group GROUP, sharing partitions with its other members, and "
    "commit offsets of the records printed. Without it: all partitions, no group, no commits.",
)
@click.option("--max", "-n", "max_records", type=click.IntRange(1), default=None, help="Stop after this many records.")
@click.option(
    "--timeout-s", type=click.FloatRange(min=0, min_open=True), default=None,
    help="Stop after this many seconds without a record; also how long to wait for a kafka:// "
    f"broker to answer (default: run until Ctrl-C or SIGTERM; the broker gets {TIMEOUT_S_DEFAULT:g} s).",
)
@click.option("--print-key", is_flag=True, help="Print KEY<separator>VALUE instead of the value alone.")
@click.option(
    "--print-headers", is_flag=True,
    help="Print the headers first, as name:value,name:value (NO_HEADERS when there are none), then the separator.",
)
@click.option(
    "--key-separator", metavar="SEP", default=None,
    help="What goes between headers, key and value (default: a tab); implies --print-key.",
)
@broker_option
def consume(
    topic: str, from_beginning: bool, group: str | None, max_records: int | None, timeout_s: float | None,
    print_key: bool, print_headers: bool, key_separator: str | None, broker_url: str,
) -> None:
    """Print TOPIC's records to stdout, one per line, as raw bytes.

    Stops after --max records, after --timeout-s without a record, or on Ctrl-C/SIGTERM, and
    then exits 0 after leaving the group; the number of records printed goes to stderr.
    """
    print_key = print_key or key_separator is not None
    separator = (key_separator if key_separator is not None else "\t").encode()

    def line(record: Record) -> bytes:
        return _line(record, separator, print_key, print_headers)

    out = sys.stdout.buffer
    written = run(_consume(broker_url, topic, from_beginning, group, max_records, timeout_s, line, out))
    click.echo(f"consumed {written} records", err=True)
