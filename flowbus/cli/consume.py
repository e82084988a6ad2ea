"""``flowbus consume TOPIC``: print a topic's records, one value per line.

Without ``--group`` it reads every partition directly (no group, no commits, nothing left behind
on the broker). With ``--group G`` it joins group G like any consumer and commits, after each
batch is written to stdout, the offsets of exactly the records written — so a ``--max`` run that
stops in the middle of a batch leaves the rest for the next reader of the group.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
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
"""A poll waits at most this long, so Ctrl-C, SIGTERM and --timeout-s are noticed quickly."""
CLIENT_ID = "flowbus-consume"
"""The client id a ``--group`` member shows in ``flowbus groups describe``."""


def _lines(records: list[Record], key_separator: bytes | None) -> bytes:
    """The output for a batch: values (and keys) as raw bytes, one record per line; a null key
    or value prints as nothing."""
    if key_separator is None:
        return b"".join((r.value or b"") + b"\n" for r in records)
    return b"".join((r.key or b"") + key_separator + (r.value or b"") + b"\n" for r in records)


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
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        offsets[TopicPartition(r.topic, r.partition)] = r.offset + 1
    try:
        await consumer.commit(offsets)
    except CommitError as exc:
        click.echo(f"warning: commit failed, these records will be read again: {exc}", err=True)


async def _consume(
    broker_url: str, topic: str, from_beginning: bool, group: str | None, max_records: int | None,
    idle_timeout_s: float | None, key_separator: bytes | None, out: BinaryIO,
) -> int:
    """Write records to ``out`` until a limit or a signal; returns how many were written."""
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
                    if not records:
                        if idle_timeout_s is not None and time.monotonic() - last_record_s >= idle_timeout_s:
                            break
                        continue
                    last_record_s = time.monotonic()
                    try:
                        out.write(_lines(records, key_separator))
                        out.flush()
                    except BrokenPipeError:
                        _silence_stdout()
                        break  # the reader went away; what it did not read is not committed
                    written += len(records)
                    if group is not None:
                        await _commit(consumer, records)
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
    "--key-separator", metavar="SEP", default=None,
    help="What goes between key and value (default: a tab); implies --print-key.",
)
@broker_option
def consume(
    topic: str, from_beginning: bool, group: str | None, max_records: int | None, timeout_s: float | None,
    print_key: bool, key_separator: str | None, broker_url: str,
) -> None:
    """Print TOPIC's records to stdout, one per line, as raw bytes.

    Stops after --max records, after --timeout-s without a record, or on Ctrl-C/SIGTERM, and
    then exits 0 after leaving the group; the number of records printed goes to stderr.
    """
    separator = None
    if print_key or key_separator is not None:
        separator = (key_separator if key_separator is not None else "\t").encode()
    out = sys.stdout.buffer
    written = run(_consume(broker_url, topic, from_beginning, group, max_records, timeout_s, separator, out))
    click.echo(f"consumed {written} records", err=True)
