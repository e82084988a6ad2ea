"""``flowbus produce TOPIC``: one record per line of stdin.

Lines are read on a thread in chunks of whatever stdin has ready, so a pipe of a million lines
goes out in large batches while an interactive terminal sends each line as soon as it is typed. Between the reader and the producer sits a bounded queue: a slow broker slows the
reader down instead of letting memory grow.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

import click

from flowbus.cli.common import (
    broker_option,
    connect,
    next_or_stop,
    require_topic,
    run,
    stop_signals,
    timeout_option,
)
from flowbus.transports import Producer, RecordMetadata
from flowbus.transports.errors import ProduceError

READ_CHUNK_BYTES_MAX = 64 * 1024
"""At most this much is read from stdin at a time."""
CHUNKS_QUEUED_MAX = 16
"""Chunks of lines waiting for the producer: about 1 MiB of ordinary lines (a chunk holding one
very long line can be up to LINE_BYTES_MAX)."""
RECORDS_IN_FLIGHT_MAX = 10_000
"""Records sent but not yet acknowledged; at this many the command waits for acknowledgements."""
LINE_BYTES_MAX = 16 * 1024 * 1024
"""A line longer than this (no newline in 16 MiB) is an error, not an unbounded buffer."""

_EOF = None
PUT_WAIT_S = 0.1
"""How often the reader thread, waiting for room in the queue, checks whether the command stopped."""

_Item = list[bytes] | click.ClickException | None
"""What the reader thread queues: a chunk of lines, the error that stopped it, or EOF (None)."""


def _split_key(line: bytes, separator: bytes | None) -> tuple[bytes | None, bytes]:
    """``(key, value)`` of one line: the text before the first separator is the key; a line
    without the separator has no key (null) and the whole line as its value."""
    if separator is None:
        return None, line
    key, sep, value = line.partition(separator)
    if not sep:
        return None, line
    return key, value


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def _chunk_reader(stdin: BinaryIO) -> Callable[[int], bytes]:
    """A ``read(n)`` that returns what is ready (one typed line, or a pipe's buffer) instead of
    waiting for ``n`` bytes.

    A real file descriptor is read with ``os.read``, bypassing the buffered reader: after Ctrl-C
    this thread may still be blocked in a read while the interpreter exits, and a thread stuck
    inside a buffered reader holds its lock, which aborts the interpreter's shutdown. Streams
    without a descriptor (a test runner's input) use ``read1``.
    """
    try:
        fd = stdin.fileno()
    except (OSError, ValueError, AttributeError):
        return getattr(stdin, "read1", stdin.read)
    return lambda size: os.read(fd, size)


def _read_lines(
    stdin: BinaryIO, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Item], stopped: threading.Event
) -> None:
    """Thread body: queue lists of complete lines (line endings removed), then EOF."""

    def put(item: _Item) -> bool:
        if stopped.is_set():
            return False  # the command is done (Ctrl-C); its loop may already be closed
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stopped.is_set():
            try:
                future.result(PUT_WAIT_S)
                return True
            except TimeoutError:
                continue
        future.cancel()
        return False

    read = _chunk_reader(stdin)
    # The start of the current line when it spans chunks; kept as pieces so a long line is
    # joined once rather than copied again with every chunk.
    pieces: list[bytes] = []
    pieces_bytes = 0
    try:
        while not stopped.is_set():
            chunk = read(READ_CHUNK_BYTES_MAX)
            if not chunk:
                break
            if b"\n" not in chunk:
                pieces.append(chunk)
                pieces_bytes += len(chunk)
                if pieces_bytes > LINE_BYTES_MAX:
                    put(click.ClickException(f"a line of stdin is longer than {LINE_BYTES_MAX} bytes"))
                    return
                continue
            lines = chunk.split(b"\n")
            if pieces:
                lines[0] = b"".join(pieces) + lines[0]
            tail = lines.pop()
            pieces, pieces_bytes = ([tail], len(tail)) if tail else ([], 0)
            if not put([_strip_cr(line) for line in lines]):
                return
        if pieces:
            put([_strip_cr(b"".join(pieces))])
    except OSError as exc:
        put(click.ClickException(f"reading stdin failed: {exc}"))
    finally:
        put(_EOF)


class _Deliveries:
    """Counts acknowledged and failed records; keeps only the unacknowledged futures."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.first_error: str | None = None
        self.pending: set[asyncio.Future[RecordMetadata]] = set()

    def track(self, future: asyncio.Future[RecordMetadata]) -> None:
        self.pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[RecordMetadata]) -> None:
        self.pending.discard(future)
        if future.cancelled():
            self._fail("cancelled")
        elif future.exception() is not None:
            self._fail(str(future.exception()))
        else:
            self.acked += 1

    def _fail(self, message: str) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = message

    async def settle(self, producer: Producer, timeout_s: float) -> None:
        """Flush, then wait for every delivery report; reports still missing count as failed."""
        try:
            await producer.flush(int(timeout_s * 1000))
        except ProduceError as exc:
            if self.first_error is None:
                self.first_error = str(exc)
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=timeout_s)
        for future in list(self.pending):
            self.pending.discard(future)
            future.remove_done_callback(self._done)
            self._fail(f"no acknowledgement within {timeout_s} s")


async def _produce(
    broker_url: str, topic: str, separator: bytes | None, partition: int | None, timeout_s: float, stdin: BinaryIO
) -> _Deliveries:
    deliveries = _Deliveries()
    async with connect(broker_url, timeout_s=timeout_s) as transport:
        description = await require_topic(transport, topic)
        if partition is not None and partition >= description.partitions:
            raise click.ClickException(
                f"topic {topic!r} has {description.partitions} partitions; there is no partition {partition}"
            )
        producer = transport.producer()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue(CHUNKS_QUEUED_MAX)
        stopped = threading.Event()
        reader = threading.Thread(
            target=_read_lines, args=(stdin, loop, queue, stopped), name="flowbus-produce-stdin", daemon=True
        )
        # Ctrl-C or SIGTERM ends the input early: what was read is still sent and acknowledged.
        interrupted = asyncio.Event()
        with stop_signals(interrupted.set):
            reader.start()
            try:
                while True:
                    item = await next_or_stop(queue, interrupted)
                    if item is _EOF:
                        break
                    if isinstance(item, click.ClickException):
                        raise item
                    for line in item:
                        key, value = _split_key(line, separator)
                        deliveries.track(producer.send(topic, value, key, partition=partition))
                    if len(deliveries.pending) >= RECORDS_IN_FLIGHT_MAX:
                        await deliveries.settle(producer, timeout_s)
                await deliveries.settle(producer, timeout_s)
            finally:
                stopped.set()
                await producer.close()
    return deliveries


@click.command("produce")
@click.argument("topic")
@click.option(
    "--key-separator", "-K", metavar="SEP", default=None,
    help="Split each line at the first SEP: key before, value after. A line without SEP is sent "
    "with no key. Without this option every line is a value with no key.",
)
@click.option(
    "--partition", "-p", type=click.IntRange(0), default=None,
    help="Send every record to this partition (default: by key hash as Kafka's Java client, "
    "spread over partitions for records without a key).",
)
@broker_option
@timeout_option
def produce(topic: str, key_separator: str | None, partition: int | None, broker_url: str, timeout_s: float) -> None:
    """Send each line of stdin as one record to TOPIC.

    The line ending (\\n or \\r\\n) is removed; an empty line is a record with an empty value.
    At end of input the command waits for the broker to acknowledge every record, prints how many
    were acknowledged on stderr, and exits 1 if any was not.

    \b
    Example:
        printf 'user-1:clicked\\nuser-2:left\\n' | flowbus produce events -K :
    """
    if key_separator == "":
        raise click.BadParameter("the key separator cannot be empty", param_hint="--key-separator")
    separator = key_separator.encode() if key_separator is not None else None
    stdin = sys.stdin.buffer
    deliveries = run(_produce(broker_url, topic, separator, partition, timeout_s, stdin))
    click.echo(f"{deliveries.acked} records sent to {topic} and acknowledged", err=True)
    if deliveries.failed:
        raise click.ClickException(f"{deliveries.failed} records were not delivered; first error: {deliveries.first_error}")
