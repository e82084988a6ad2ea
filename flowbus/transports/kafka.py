"""``kafka://host:port[,host:port...]``: any Kafka-protocol cluster through confluent-kafka.

librdkafka's calls block, so each blocking call runs in a thread (``asyncio.to_thread``) and
never on the event loop. Rebalance callbacks fire inside ``consume`` on that thread; they hand
the framework's async ``on_assigned``/``on_revoked`` to the loop and block until they finish, so
agents finish their event and offsets are committed *before* librdkafka gives the partitions up.
Delivery reports are served by one poller thread per producer and resolve asyncio futures with
``call_soon_threadsafe``.

The producer uses the ``murmur2_random`` partitioner, Kafka's Java default, so keyed records land
on the same partitions as with the Java client and flowbus's other transports.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import groupby, repeat
from operator import itemgetter
from typing import Any, Literal

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    ConfigSource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.secret_sources import SECRET_SOURCES, SecretSourceError, read_secret
from flowbus.transports.base import (
    Consumer,
    GroupDescription,
    GroupMember,
    GroupSummary,
    Headers,
    IsolationLevel,
    OnAssigned,
    OnRevoked,
    Producer,
    RawSender,
    Record,
    RecordMetadata,
    RecordRun,
    TopicDescription,
    TopicPartition,
    TopicSpec,
    Transport,
    Watermarks,
)
from flowbus.transports.errors import (
    BrokerUnavailableError,
    CommitError,
    GroupFencedError,
    ProduceError,
    ProducerFencedError,
    TopicNotFoundError,
    TransactionError,
    TransportError,
)

log = logging.getLogger("flowbus.transports.kafka")

REQUEST_TIMEOUT_S = 30.0
PRODUCER_QUEUE_MESSAGES_MAX = 1_000_000
"""librdkafka's local queue limit; when full, send_soon serves delivery reports until there is room."""
PRODUCE_ERRORS_KEPT_MAX = 100
FLUSH_SLICE_S = 0.001


SESSION_TIMEOUT_MS = 10_000
"""How long the group waits for a silent member (a SIGKILLed worker) before moving its partitions."""
#: How long librdkafka pauses fetching after its prefetch queue filled up (its default is 1000).
FETCH_QUEUE_BACKOFF_MS = 1
FETCH_WAIT_MAX_MS = 100
"""How long the broker may hold a fetch that finds no data (librdkafka's default is 500). One fetch
per broker is in flight at a time, so a partition that becomes fetchable while a fetch of empty
ones is held waits for it: at start-up the first records of an exactly-once app with repartition
topics came 1.6 s after the assignment with 500, 0.25 s with 50. The cost is up to 10 empty
fetches a second per idle broker connection instead of 2."""


#: URL schemes of this transport: ``kafkas://`` is ``kafka://`` over TLS.
KAFKA_SCHEMES = ("kafka", "kafkas")
#: SASL mechanism of a URL that gives credentials but no ``sasl.mechanism``: SCRAM never sends
#: the password, and ``flowbus users add`` stores both SCRAM variants.
SASL_MECHANISM_DEFAULT = "SCRAM-SHA-512"
#: librdkafka settings that hold a secret. Each also has a ``NAME.file=PATH`` form (the first
#: line of PATH) and a ``NAME.env=VARNAME`` form (an environment variable), so a command line
#: never has to carry it: other users of the machine read argv in ``ps``.
SECRET_PARAMETERS = (
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
)


def redact_url(url: str) -> str:
    """``url`` with its secrets (``user:PASSWORD@`` and :data:`SECRET_PARAMETERS`) replaced by ``***``.

    Only the values are hidden: ``sasl.password.file=PATH`` and ``sasl.password.env=NAME`` say
    where a secret is, not what it is, so they stay readable in error messages.
    """
    scheme, sep, rest = url.partition("://")
    netloc, qsep, query = rest.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    items = [
        f"{item.partition('=')[0]}=***" if urllib.parse.unquote(item.partition("=")[0]) in SECRET_PARAMETERS else item
        for item in query.split("&")
    ] if query else []
    return f"{scheme}{sep}{netloc}{qsep}{'&'.join(items)}"


def inline_secrets(url: str) -> list[str]:
    """Names of the secrets written into ``url`` itself: ``sasl.password`` for a
    ``USER:PASSWORD@`` part, and each of :data:`SECRET_PARAMETERS` given as a query parameter.

    A command-line tool refuses such a URL (``flowbus.cli.common.refuse_inline_secrets``); the
    ``.file`` and ``.env`` forms are not listed.
    """
    _, _, rest = url.partition("://")
    netloc, _, query = rest.partition("?")
    userinfo, at, _ = netloc.rpartition("@")
    found = []
    if at and userinfo.partition(":")[2]:
        found.append("sasl.password")
    for item in filter(None, query.split("&")):
        name = urllib.parse.unquote(item.partition("=")[0])
        if name in SECRET_PARAMETERS and name not in found:
            found.append(name)
    return found


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    """``kafka[s]://[USER:PASSWORD@]h1:p1,h2:p2?name=value&...``: bootstrap servers and
    librdkafka settings (``docs/security.md``).

    Query parameters are librdkafka settings, percent-decoded (``security.protocol``,
    ``sasl.mechanism``, ``sasl.username``, ``sasl.password``, ``ssl.ca.location``, ...). Each of
    :data:`SECRET_PARAMETERS` may instead be given as ``NAME.file=PATH`` (the first line of PATH)
    or ``NAME.env=VARNAME`` (an environment variable): ``sasl.password.file=/run/secrets/app``.
    ``USER:PASSWORD@`` sets ``sasl.username`` and ``sasl.password``. Unless
    ``security.protocol`` is given it follows from the URL: ``kafkas://`` is SSL, SASL settings
    make it SASL_PLAINTEXT (SASL_SSL with ``kafkas://``); SASL without ``sasl.mechanism`` uses
    :data:`SASL_MECHANISM_DEFAULT`.

    Raises:
        TransportError: no broker, a malformed parameter, an unreadable secret file or an unset
            secret variable.
    """
    shown = redact_url(url)
    scheme, _, rest = url.partition("://")
    netloc, _, query = rest.partition("?")
    userinfo, at, servers = netloc.rpartition("@")
    servers = servers.strip("/")
    if not servers:
        raise TransportError(f"{shown!r} names no broker; use kafka://host:port")
    config: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        name, sep, value = item.partition("=")
        if not sep:
            raise TransportError(f"{shown!r}: expected name=value, got {name!r}")
        config[urllib.parse.unquote(name)] = urllib.parse.unquote(value)
    if at:
        user, _, password = userinfo.partition(":")
        config.setdefault("sasl.username", urllib.parse.unquote(user))
        if password:
            config.setdefault("sasl.password", urllib.parse.unquote(password))
    for name in SECRET_PARAMETERS:
        for source in SECRET_SOURCES:
            where = config.pop(f"{name}.{source}", None)
            if where is not None:
                try:
                    config[name] = read_secret(name, source, where)
                except SecretSourceError as exc:
                    raise TransportError(str(exc)) from exc
    sasl = any(name.startswith("sasl.") for name in config)
    if "security.protocol" not in config and (sasl or scheme == "kafkas"):
        config["security.protocol"] = ("SASL_" if sasl else "") + ("SSL" if scheme == "kafkas" else "PLAINTEXT")
    if sasl and "sasl.mechanism" not in config and "sasl.mechanisms" not in config:
        config["sasl.mechanism"] = SASL_MECHANISM_DEFAULT
    return servers, config


def client_config_from_url(url: str) -> dict[str, str]:
    """librdkafka's configuration (``bootstrap.servers`` and security settings) for ``url``.

    Raises:
        TransportError: see :func:`_parse_url`.
    """
    servers, config = _parse_url(url)
    return {"bootstrap.servers": servers, **config}


_GROUP_FENCED_CODES = frozenset({KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.FENCED_INSTANCE_ID})
"""TxnOffsetCommit's answers for a member the group moved on without (KIP-447); librdkafka
makes them abortable errors of the transaction, not fatal ones."""


def _transaction_error(exc: KafkaException) -> TransactionError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH):
        return ProducerFencedError(str(err))
    if isinstance(err, KafkaError) and err.code() in _GROUP_FENCED_CODES and not err.fatal():
        return GroupFencedError(str(err))
    return TransactionError(str(exc))


_UNREACHABLE_CODES = frozenset(
    {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}
)
"""librdkafka's codes for "no broker answered in time": the admin calls below report them as
:class:`BrokerUnavailableError` so a tool can say *unreachable* instead of a raw error."""
_LOGIN_ERROR_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})
"""librdkafka's codes for a refused SASL login and a failed TLS handshake (an untrusted
certificate): reported as such, not as an unreachable broker."""
_LEADER_UNKNOWN_CODES = frozenset(
    {KafkaError._NOENT, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION, *_UNREACHABLE_CODES}
)
"""Codes of a list-offsets call made while the partition's leader is not known (yet): retried."""
WATERMARKS_RETRY_S = 0.2
START_LOOKUP_TIMEOUT_S = 2.0
"""Limit of the one committed-offset lookup a consumer makes for a partition that returned
nothing since it was assigned (to tell whether it is caught up); a failed lookup is retried
after the next poll."""
START_LOOKUP_DELAY_S = 0.5
"""A partition assigned less than this long ago that returned nothing yet is noted "not caught
up" without the start-offset lookup: on a flowing stream its first records come before then, and
the lookup's round trips (the committed offset, then each partition's watermarks) held the poll
thread, and so the worker's first records, for ~300 ms after every assignment."""
_UNKNOWN_TOPIC_CODES = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION})

#: Kafka's group state names (what ``kafka-consumer-groups`` prints) by librdkafka's enum name.
_GROUP_STATE_NAMES = {
    "UNKNOWN": "Unknown",
    "PREPARING_REBALANCING": "PreparingRebalance",
    "COMPLETING_REBALANCING": "CompletingRebalance",
    "STABLE": "Stable",
    "DEAD": "Dead",
    "EMPTY": "Empty",
}


def _admin_error(exc: BaseException, what: str) -> TransportError:
    """The transport error for a failed admin call (``exc`` from a future or a blocking call)."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    code = err.code() if isinstance(err, KafkaError) else None
    if code in _UNREACHABLE_CODES or isinstance(exc, TimeoutError):
        return BrokerUnavailableError(f"{what}: no answer from the broker ({err or 'timed out'})")
    if code in _UNKNOWN_TOPIC_CODES:
        return TopicNotFoundError(f"{what}: {err}")
    return TransportError(f"{what}: {err or exc}")


def _group_state(state: Any) -> str:
    name = getattr(state, "name", None)
    return _GROUP_STATE_NAMES.get(str(name), str(name or "Unknown"))


_PARTITION_ANY = -1
"""librdkafka's RD_KAFKA_PARTITION_UA: the configured partitioner picks the partition."""


class KafkaProducer(Producer):
    """confluent-kafka's Producer with asyncio delivery futures."""

    def __init__(self, config: dict[str, Any], transactional: bool) -> None:
        self._producer = confluent_kafka.Producer(config)
        self._transactional = transactional
        self._errors: list[KafkaError] = []
        self._closed = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._poller = threading.Thread(target=self._serve_reports, name="flowbus-kafka-delivery", daemon=True)
        self._poller.start()
        #: Records per topic (metrics); bounded by the topics this producer writes.
        self.records_sent_by_topic: dict[str, int] = {}
        self._records_at_begin = 0
        """:attr:`records_sent` when the current transaction began."""
        self._soon_callback: Callable[[KafkaError | None, Any], None] | None = (
            None if transactional else self._on_error_only
        )
        """The delivery callback of :meth:`send_soon` records (a dataflow's outputs).

        Without a transaction it is :meth:`_on_error_only`: a failed record makes the next
        :meth:`flush` raise. In a transaction librdkafka counts failed deliveries itself and
        refuses to commit the transaction when any failed, so the callback would only cost: the
        client builds a message object for every delivery report and calls Python for it, on the
        poll thread, holding the GIL. A windowed count whose closed windows send about as many
        records as it reads spent a tenth of its time there (+10% exactly-once throughput
        without). After a commit refused for failed deliveries the callback is back until a
        commit of records succeeds, so that a repeated failure names its cause at the next flush."""

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(0.05)
            except KafkaException as exc:
                # A fatal producer error (e.g. fenced): the next flush or transaction call raises
                # it to the worker; this thread only has to stay quiet and keep serving.
                if len(self._errors) < PRODUCE_ERRORS_KEPT_MAX:
                    self._errors.append(exc.args[0] if exc.args else KafkaError(KafkaError._FAIL))
                self._closed.wait(0.5)

    def _on_error_only(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None and len(self._errors) < PRODUCE_ERRORS_KEPT_MAX:
            self._errors.append(err)

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int | None,
                 headers: Headers, timestamp_ms: int | None, callback: Any) -> None:
        kwargs: dict[str, Any] = {"on_delivery": callback}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        self.records_sent += 1
        self.records_sent_by_topic[topic] = self.records_sent_by_topic.get(topic, 0) + 1
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                # The local queue is full: wait for deliveries rather than drop anything.
                self._producer.poll(0.01)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        loop = self._loop
        fut: asyncio.Future[RecordMetadata] = loop.create_future()

        def resolve(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                loop.call_soon_threadsafe(_set_exception, fut, ProduceError(str(err)))
            else:
                meta = RecordMetadata(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1])
                loop.call_soon_threadsafe(_set_result, fut, meta)

        self._produce(topic, value, key, partition, headers, timestamp_ms, resolve)
        return fut

    def send_soon(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
    ) -> None:
        self._produce(topic, value, key, partition, headers, timestamp_ms, self._soon_callback)

    def sender_for(self, topic: str) -> RawSender:
        """:meth:`send_soon` for one topic with what can be, resolved once: a dataflow's output
        calls this per record, and the generic path (keyword dict, per-record topic lookups)
        cost a quarter of the produce call itself.

        ``produce`` gets its arguments by position, in the order of confluent-kafka's keyword
        list (topic, value, key, partition, callback, on_delivery, timestamp, headers): given
        by keyword, CPython's argument parser makes a string of every name in that list on every
        call, a seventh of the call's cost (measured with py-spy --native)."""
        produce = self._producer.produce
        by_topic = self.records_sent_by_topic
        by_topic.setdefault(topic, 0)

        def send(key: bytes | None, value: bytes | None, timestamp_ms: int | None = None,
                 headers: Headers = ()) -> None:
            self.records_sent += 1
            by_topic[topic] += 1
            on_delivery = self._soon_callback
            while True:
                try:
                    if headers:
                        produce(topic, value, key, _PARTITION_ANY, on_delivery, None, timestamp_ms or 0, list(headers))
                    else:
                        produce(topic, value, key, _PARTITION_ANY, on_delivery, None, timestamp_ms or 0)
                    return
                except BufferError:
                    self._producer.poll(0.01)  # the local queue is full: wait, never drop

        return send

    async def flush(self, timeout_ms: int | None = None) -> None:
        timeout_s = REQUEST_TIMEOUT_S if timeout_ms is None else timeout_ms / 1000
        left = await asyncio.to_thread(self._flush_in_slices, timeout_s)
        if left:
            raise ProduceError(f"{left} records still undelivered after {timeout_s}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise ProduceError(f"{len(errors)} records failed, first: {errors[0]}")

    def _flush_in_slices(self, timeout_s: float) -> int:
        """librdkafka's flush in slices of :data:`FLUSH_SLICE_S`; returns the records left.

        One long flush waits for delivery reports in polls of up to 10 ms, and the delivery
        thread (:meth:`_serve_reports`) polls the same queue: when that thread takes the last
        report, the flush sleeps out its 10 ms with nothing left to wait for. That happened to
        a quarter of the flushes of a busy exactly-once worker (11-12 ms instead of 1-3, at a
        commit every 100 ms). Each slice is a flush too, so the records waiting for linger.ms
        still go out at once."""
        deadline = time.monotonic() + timeout_s
        left = self._producer.flush(FLUSH_SLICE_S)
        while left and time.monotonic() < deadline:
            left = self._producer.flush(min(FLUSH_SLICE_S, max(deadline - time.monotonic(), 0.0)))
        return left

    async def partitions_for(self, topic: str) -> int:
        meta = await asyncio.to_thread(self._producer.list_topics, topic, REQUEST_TIMEOUT_S)
        return len(meta.topics[topic].partitions)

    async def init_transactions(self) -> None:
        if not self._transactional:
            raise TransactionError("init_transactions needs a transactional_id")
        try:
            await asyncio.to_thread(self._producer.init_transactions, REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise _transaction_error(exc) from exc

    def begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise _transaction_error(exc) from exc
        self._records_at_begin = self.records_sent

    async def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group_metadata: object) -> None:
        parts = [KafkaTopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        try:
            await asyncio.to_thread(self._producer.send_offsets_to_transaction, parts, group_metadata, REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise self._failed_transaction(exc) from exc

    async def commit_transaction(self) -> None:
        try:
            await asyncio.to_thread(self._producer.commit_transaction, REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise self._failed_transaction(exc) from exc
        if self._transactional and self.records_sent != self._records_at_begin:
            self._soon_callback = None  # records went through: none failed

    def _failed_transaction(self, exc: KafkaException) -> TransactionError:
        """The error of a transaction call that failed; after an abortable failure, records
        report their delivery one by one (see :attr:`_soon_callback`).

        The failure may be a record sent without a delivery callback that the broker refused
        (librdkafka names the first refusal, or counts them). Once records report their delivery,
        a record refused again fails the next :meth:`flush` with its own error, as without a
        transaction, where the worker stops, instead of failing every commit of its replay."""
        error = _transaction_error(exc)
        err = exc.args[0] if exc.args else None
        if (self._soon_callback is None and type(error) is TransactionError and isinstance(err, KafkaError)
                and err.txn_requires_abort()):
            self._soon_callback = self._on_error_only
            return TransactionError(f"{err.str()} (records sent from now on report their delivery one by one)")
        return error

    async def abort_transaction(self) -> None:
        try:
            await asyncio.to_thread(self._producer.abort_transaction, REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError._STATE:
                return  # no transaction open
            raise _transaction_error(exc) from exc

    async def close(self) -> None:
        try:
            await asyncio.to_thread(self._producer.flush, REQUEST_TIMEOUT_S)
        finally:
            self._closed.set()
            await asyncio.to_thread(self._poller.join)


_message_error = confluent_kafka.Message.error
_message_headers = confluent_kafka.Message.headers
_message_topic = confluent_kafka.Message.topic
_message_partition = confluent_kafka.Message.partition
_message_offset = confluent_kafka.Message.offset
_message_timestamp = confluent_kafka.Message.timestamp
_message_key = confluent_kafka.Message.key
_message_value = confluent_kafka.Message.value
_second = itemgetter(1)
_new_tuple = tuple.__new__


def _columns_of(messages: Sequence[Any]) -> tuple[list[bytes | None], list[bytes | None]]:
    """The keys and the values of confluent-kafka messages."""
    return list(map(_message_key, messages)), list(map(_message_value, messages))


def _run_of(messages: Sequence[Any], build: Callable[[Sequence[Any]], list[Record]]) -> RecordRun:
    """A run of consecutive messages of one topic partition; its columns or its records are made
    from the messages when asked."""
    first, last = messages[0], messages[-1]
    return RecordRun(
        TopicPartition(first.topic(), first.partition()), len(messages), first.offset(), last.offset() + 1,
        first.timestamp()[1], last.timestamp()[1], build=build, build_columns=_columns_of, source=messages,
    )


def _record_headers(headers: list[tuple[str, bytes | None]] | None) -> Headers:
    """A message's headers as a record's: a tuple, a header without a value as ``b""``."""
    if not headers:
        return ()
    return tuple((k, v if v is not None else b"") for k, v in headers)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class _Call:
    """A consumer call another thread asked the rebalance callback's thread to make."""

    __slots__ = ("fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.result: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run(self) -> None:
        try:
            self.result.set_result(self.fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.result.set_exception(exc)


class KafkaConsumer(Consumer):
    """confluent-kafka's Consumer; auto-commit and auto offset store are off."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._consumer = confluent_kafka.Consumer(config)
        self._loop = asyncio.get_running_loop()
        self._on_assigned: OnAssigned | None = None
        self._on_revoked: OnRevoked | None = None
        self._topics: list[str] = []
        """What :meth:`subscribe` was given, for :meth:`rejoin`."""
        self._single_topic = False
        """Subscribed to, or assigned partitions of, one topic only (no regex subscription): a
        polled batch then holds one topic, and :meth:`poll_runs` does not compare topics.
        librdkafka drops the queued messages of partitions that left the assignment."""
        self._assignment: list[TopicPartition] = []
        self._closed = False
        self._at_end: dict[TopicPartition, bool] = {}
        """Per assigned partition, whether the last poll left it read to its end."""
        self._start_offsets: dict[TopicPartition, int] = {}
        """Where reading starts in a partition that returned nothing yet since it was assigned
        (librdkafka reports no position until a message is consumed): its committed offset,
        or where ``auto.offset.reset`` points. Looked up once per assignment, on the poll thread;
        set by :meth:`seek` and :meth:`resume` (whose seek clears librdkafka's position too)."""
        self._offset_reset = str(config.get("auto.offset.reset", "latest"))
        self._assigned_at: dict[TopicPartition, float] = {}
        """When each assigned partition was assigned (monotonic s): see START_LOOKUP_DELAY_S."""
        self._in_rebalance = False
        self._pause_after_rebalance: list[KafkaTopicPartition] = []
        self._calls_lock = threading.Lock()
        self._calls: queue.SimpleQueue[_Call | None] | None = None
        """Consumer calls for the thread running a rebalance callback to make (see _run_on_loop)."""
        self._callback_thread: int | None = None

    def _run_on_loop(self, coro: Any) -> None:
        """Run a rebalance callback's coroutine on the event loop and wait for it, making the
        consumer calls other threads ask for meanwhile (the coroutine's commit, group metadata):
        librdkafka serves some of them through the thread that runs the rebalance callback, so
        made from another thread while this one waits here they would wait forever."""
        calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        with self._calls_lock:
            self._calls, self._callback_thread = calls, threading.get_ident()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        future.add_done_callback(lambda _: calls.put(None))
        try:
            while (call := calls.get()) is not None:
                call.run()
        finally:
            with self._calls_lock:
                self._calls = self._callback_thread = None
            while not calls.empty():  # asked for just before the coroutine ended
                late = calls.get_nowait()
                if late is not None:
                    late.run()
        future.result()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the thread running a rebalance callback when one runs (see _run_on_loop)."""
        with self._calls_lock:
            calls = self._calls
            if calls is None or self._callback_thread == threading.get_ident():
                call = None
            else:
                call = _Call(fn)
                calls.put(call)
        return fn() if call is None else call.result.result()

    def _assign_cb(self, consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        self._assignment.extend(tp for tp in tps if tp not in self._assignment)
        assigned_at = time.monotonic()
        for tp in tps:
            self._start_offsets.pop(tp, None)
            self._assigned_at[tp] = assigned_at
        if self._on_assigned is None:
            return
        # Assign now (instead of letting confluent-kafka do it after this callback), so partitions
        # the callback pauses stay paused. librdkafka serves pause() through the thread that runs
        # this callback, so a pause asked for from the event loop meanwhile would wait forever:
        # it is queued and applied here, once the callback is done.
        consumer.assign(partitions)
        self._in_rebalance = True
        try:
            self._run_on_loop(self._on_assigned(tps))
        finally:
            self._in_rebalance = False
            if self._pause_after_rebalance:
                consumer.pause(self._pause_after_rebalance)
                self._pause_after_rebalance = []

    def _revoke_cb(self, consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        if self._on_revoked is not None:
            self._run_on_loop(self._on_revoked(tps))
        self._assignment = [tp for tp in self._assignment if tp not in tps]
        for tp in tps:
            self._start_offsets.pop(tp, None)
            self._assigned_at.pop(tp, None)

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assigned: OnAssigned | None = None,
        on_revoked: OnRevoked | None = None,
    ) -> None:
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self._topics = list(topics)
        self._single_topic = len(self._topics) == 1 and not self._topics[0].startswith("^")
        self._consumer.subscribe(list(topics), on_assign=self._assign_cb, on_revoke=self._revoke_cb, on_lost=self._revoke_cb)

    def rejoin(self) -> None:
        """Unsubscribe and subscribe again, as Kafka Streams does after a fenced commit: librdkafka
        revokes the assignment (through ``on_revoked``, inside a following poll), leaves the
        group and joins as a new member; new partitions start from the committed offsets.
        Messages of the old assignment already fetched may still be returned before the
        revocation: the caller ignores them."""
        topics = self._topics
        if not topics or self._closed:
            return

        def again() -> None:
            self._consumer.unsubscribe()
            self._consumer.subscribe(list(topics), on_assign=self._assign_cb, on_revoke=self._revoke_cb, on_lost=self._revoke_cb)

        self._call(again)

    def assign(self, partitions: Sequence[TopicPartition], offsets: Mapping[TopicPartition, int] | None = None) -> None:
        starts = offsets or {}
        self._consumer.assign([
            KafkaTopicPartition(tp.topic, tp.partition, starts[tp]) if tp in starts
            else KafkaTopicPartition(tp.topic, tp.partition)  # auto.offset.reset decides
            for tp in partitions
        ])
        self._assignment = list(partitions)
        self._single_topic = len({tp.topic for tp in partitions}) == 1
        self._start_offsets = {tp: starts[tp] for tp in partitions if tp in starts and starts[tp] >= 0}

    def position(self, partition: TopicPartition) -> int | None:
        # librdkafka moves the application position past control records (transaction markers),
        # so a read_committed reader at the end of a partition reports the end offset.
        found = self._consumer.position([KafkaTopicPartition(partition.topic, partition.partition)])
        offset = found[0].offset if found else -1
        return offset if offset >= 0 else None

    def caught_up_cached(self, partition: TopicPartition) -> bool | None:
        """From the poll thread's notes after its last ``consume``: the position reached the
        high watermark of the last fetch response. Consumer calls from the event loop would wait
        for a ``consume`` running in the poll thread (confluent-kafka serializes them), so the
        worker's idle checks read these notes instead. Under read_committed an open transaction
        keeps the position below the high watermark: not caught up, which is the safe answer."""
        return self._at_end.get(partition, False)

    def _consume_and_note_ends(self, max_records: int, timeout_s: float) -> list[Any]:
        """``consume``, then note per assigned partition whether it is read to its end (on the
        poll thread, so nothing waits; cached watermarks need no broker round trip). A partition
        that returned nothing since it was assigned has no position yet: it is at its end when
        its start offset (looked up once) reached the high watermark, so a worker restarted on a
        fully processed log is caught up without reading anything.

        Returns what is fetched already, at once; waits (up to ``timeout_s``) only when nothing
        is: librdkafka's ``consume(n, timeout)`` waits until it has ``n`` messages or the
        timeout passed, so a backlog's last partial batch, and every record of a stream slower
        than ``max_records`` per timeout, waited the whole timeout (100 ms a poll) first."""
        consume = self._consumer.consume
        messages = consume(max_records, 0)
        if not messages and timeout_s > 0:
            messages = consume(1, timeout_s)
            if messages and max_records > 1:
                messages.extend(consume(max_records - 1, 0))
        assignment = self._assignment
        if assignment:
            at_end: dict[TopicPartition, bool] = {}
            try:
                positions = self._consumer.position([KafkaTopicPartition(tp.topic, tp.partition) for tp in assignment])
                unknown: list[tuple[TopicPartition, int]] = []
                lookup_before = time.monotonic() - START_LOOKUP_DELAY_S
                for found in positions:
                    tp = TopicPartition(found.topic, found.partition)
                    _, high = self._consumer.get_watermark_offsets(found, cached=True)
                    if found.offset >= 0:
                        at_end[tp] = 0 <= high <= found.offset
                    elif high >= 0 and (tp in self._start_offsets or self._assigned_at.get(tp, 0.0) <= lookup_before):
                        unknown.append((tp, high))
                    else:
                        at_end[tp] = False  # no fetch response yet, or assigned just now (its records may be coming)
                if unknown:
                    starts = self._starts([tp for tp, _ in unknown])
                    for tp, high in unknown:
                        start = starts.get(tp)
                        at_end[tp] = start is not None and high <= start
            except KafkaException:
                at_end = {}  # closing, or a partition just revoked: not known, so not caught up
            self._at_end = at_end
        return messages

    def _starts(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Start offsets of partitions with no position yet, from :attr:`_start_offsets` or
        looked up (committed offset, else the ``auto.offset.reset`` end); a failed lookup
        leaves a partition out (not known: not caught up) and is tried again after the next poll."""
        known = self._start_offsets
        missing = [tp for tp in partitions if tp not in known]
        if missing:
            committed = self._consumer.committed(
                [KafkaTopicPartition(tp.topic, tp.partition) for tp in missing], timeout=START_LOOKUP_TIMEOUT_S
            )
            for found in committed:
                tp = TopicPartition(found.topic, found.partition)
                if found.error is not None:
                    continue
                if found.offset >= 0:
                    known[tp] = found.offset
                    continue
                low, high = self._consumer.get_watermark_offsets(found, timeout=START_LOOKUP_TIMEOUT_S, cached=False)
                known[tp] = low if self._offset_reset in ("earliest", "smallest", "beginning") else high
        return {tp: known[tp] for tp in partitions if tp in known}

    async def _poll_messages(self, max_records: int, timeout_ms: int) -> list[Any]:
        """librdkafka's messages of one poll, without its error events (see :meth:`_without_errors`)."""
        messages = await asyncio.to_thread(self._consume_and_note_ends, max_records, timeout_ms / 1000)
        if messages and any(map(_message_error, messages)):
            messages = self._without_errors(messages)
        return messages

    async def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        messages = await self._poll_messages(max_records, timeout_ms)
        return self._records_of(messages) if messages else []

    async def poll_runs(self, max_records: int, timeout_ms: int) -> list[RecordRun]:
        """The polled messages cut into runs of one partition, each with its keys and values;
        a run makes its records from its messages only if asked (see :class:`RecordRun`)."""
        messages = await self._poll_messages(max_records, timeout_ms)
        if not messages:
            return []
        runs: list[RecordRun] = []
        build = self._records_of
        count = len(messages)
        start = 0
        # librdkafka hands out each fetched partition's messages together: group by the
        # partition number (ints, compared in C), then split a run that spans two topics.
        for _, same in groupby(map(_message_partition, messages)):
            end = start + len(list(same))
            part = messages if start == 0 and end == count else messages[start:end]
            if self._single_topic or len(set(map(_message_topic, part))) == 1:
                runs.append(_run_of(part, build))
            else:
                at = 0
                for _, same_topic in groupby(map(_message_topic, part)):
                    upto = at + len(list(same_topic))
                    runs.append(_run_of(part[at:upto], build))
                    at = upto
            start = end
        return runs

    @staticmethod
    def _records_of(messages: Sequence[Any]) -> list[Record]:
        """Records of confluent-kafka messages (no error events among them)."""
        # Column by column: map() calls each C accessor without a Python-level loop, and
        # tuple.__new__ skips NamedTuple's Python-level constructor. 0.35 -> 0.25 µs a record
        # against a record-by-record loop (benchmarks.md, eighth session).
        headers = list(map(_message_headers, messages))
        return list(map(_new_tuple, repeat(Record), zip(
            map(_message_topic, messages),
            map(_message_partition, messages),
            map(_message_offset, messages),
            map(_second, map(_message_timestamp, messages)),
            map(_message_key, messages),
            map(_message_value, messages),
            map(_record_headers, headers) if any(headers) else repeat(()),
        )))

    @staticmethod
    def _without_errors(messages: list[Any]) -> list[Any]:
        """``messages`` without the error events among them: a fatal one raises, a partition's
        end is skipped, any other is logged (transient: a subscribed topic not created yet, a
        broker restarting; librdkafka retries by itself)."""
        kept = []
        for m in messages:
            err = m.error()
            if err is None:
                kept.append(m)
                continue
            if err.fatal():
                raise TransportError(f"consume failed: {err}")
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", err)
        return kept

    def assignment(self) -> list[TopicPartition]:
        return list(self._assignment)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        parts = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]
        if self._in_rebalance:
            self._pause_after_rebalance.extend(parts)
        else:
            self._consumer.pause(parts)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Resume, and seek each partition to its position so fetching starts at once.

        librdkafka applies a resume without waking the thread that fetches from the partition's
        broker; when every partition it fetches was paused, that thread sleeps up to 1 s (its
        fixed idle wait) before it fetches again. A worker whose agent is slower than its polls
        pauses at ``max_buffered_events`` and resumes at half of it, so each cycle stalled up to
        1 s: a relay with ``max_buffered_events=20`` ran at ~40 events/s instead of ~200. A seek
        to the position (where the resume fetches from anyway) makes the partition's fetch state
        active again, which wakes that thread. The seek clears librdkafka's position until the
        next message: :attr:`_start_offsets` keeps it for the caught-up notes meanwhile.
        """
        parts = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]
        if parts:
            self._call(lambda: self._resume_now(parts))

    def _resume_now(self, parts: list[KafkaTopicPartition]) -> None:
        self._consumer.resume(parts)
        try:
            positions = self._consumer.position(parts)
        except KafkaException:
            return  # closing: nothing to wake
        for found in positions:
            if found.offset < 0:
                continue  # nothing consumed yet: librdkafka starts the fetch itself
            try:
                self._consumer.seek(found)
            except KafkaException:
                continue  # revoked meanwhile: the resume alone is all there is to do
            self._start_offsets[TopicPartition(found.topic, found.partition)] = found.offset

    async def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        parts = [KafkaTopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        if not parts:
            return
        try:
            if asynchronous:
                self._call(lambda: self._consumer.commit(offsets=parts, asynchronous=True))
            else:
                await asyncio.to_thread(self._call, lambda: self._consumer.commit(offsets=parts, asynchronous=False))
        except KafkaException as exc:
            raise CommitError(str(exc)) from exc

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read ``partition`` from ``offset`` on; librdkafka reports no position until the next
        message, so :attr:`_start_offsets` says where reading starts meanwhile (an entry left by
        :meth:`resume` would be stale)."""
        target = KafkaTopicPartition(partition.topic, partition.partition, offset)
        self._call(lambda: self._consumer.seek(target))
        if offset >= 0:
            self._start_offsets[partition] = offset
        else:
            self._start_offsets.pop(partition, None)

    async def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        parts = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]
        found = await asyncio.to_thread(self._consumer.committed, parts, REQUEST_TIMEOUT_S)
        return {TopicPartition(p.topic, p.partition): (p.offset if p.offset >= 0 else None) for p in found}

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        def fetch() -> dict[TopicPartition, int]:
            # librdkafka needs the partitions' leaders in its metadata cache first.
            for topic in {tp.topic for tp in partitions}:
                self._consumer.list_topics(topic, REQUEST_TIMEOUT_S)
            out = {}
            for tp in partitions:
                _, high = self._consumer.get_watermark_offsets(KafkaTopicPartition(tp.topic, tp.partition), REQUEST_TIMEOUT_S)
                out[tp] = high
            return out

        return await asyncio.to_thread(fetch)

    def group_metadata(self) -> object:
        """librdkafka's metadata of this member, for the transaction's offsets (KIP-447).

        Raises:
            GroupFencedError: librdkafka no longer has a member id: its heartbeat found that the
                group removed this member (it forgets the id at once, in its own thread, and
                tells the worker only in a following poll, through ``on_lost``). Offsets sent
                with that empty metadata name no member and no generation, which the
                coordinator accepts from a transaction, as it must from pre-KIP-447 clients, so
                a zombie's commit would go through: refused here instead. The member id is read
                before and after the metadata, so the metadata is known to carry it. (A
                consumer that never subscribed, reading partitions it assigned itself, has no
                member id to lose: its metadata is returned as it is.)
        """
        if not self._topics:
            return self._call(self._consumer.consumer_group_metadata)
        before = self._call(self._consumer.memberid)
        metadata = self._call(self._consumer.consumer_group_metadata)
        after = self._call(self._consumer.memberid)
        if not before or before != after:
            raise GroupFencedError(
                "the group removed this member (librdkafka dropped its member id); its offsets cannot be committed"
            )
        return metadata

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._consumer.close)


class KafkaTransport(Transport):
    """A Kafka-protocol cluster (``flowbus broker`` or Apache Kafka) reached through librdkafka."""

    def __init__(self, url: str, *, clock: Clock = SYSTEM_CLOCK, config: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.bootstrap, from_url = _parse_url(url)
        self.extra = {**from_url, **dict(config or {})}
        self._admin: AdminClient | None = None
        self._login_error: KafkaError | None = None
        """The last SASL or TLS failure the admin client reported (its ``error_cb``)."""

    def _base(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap}

    def _with_extra(self, config: dict[str, Any], *, consumer: bool) -> dict[str, Any]:
        """Settings from the URL override the defaults; consumer-only ones stay off producers."""
        consumer_only = ("session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms", "isolation.level",
                         "fetch.wait.max.ms")
        for name, value in self.extra.items():
            if consumer or name not in consumer_only:
                config[name] = value
        return config

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            config = self._with_extra(self._base(), consumer=False)
            config.setdefault("error_cb", self._note_login_error)
            self._admin = AdminClient(config)
        return self._admin

    def _note_login_error(self, err: KafkaError) -> None:
        """Keep a refused login: librdkafka only retries it, and a metadata request then fails
        as "broker transport failure", which reads as an unreachable broker."""
        if err.code() in _LOGIN_ERROR_CODES:
            self._login_error = err

    def _refused_login(self, what: str) -> TransportError | None:
        """After a failed admin call: the refused login behind it, if there was one. Error
        callbacks are served by ``poll``, which the blocking metadata call does not do."""
        if self._admin is not None:
            self._admin.poll(0)
        if self._login_error is None:
            return None
        # "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: ... (after 110ms in state AUTH_REQ)"
        reason = self._login_error.str().partition(": ")[2].rpartition(" (after ")[0] or self._login_error.str()
        return TransportError(f"{what}: the broker refused the login ({reason})")

    async def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        if not specs:
            return
        existing = await self.describe_topics([s.name for s in specs])
        wanted = [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=dict(s.config))
            for s in specs
            if s.name not in existing
        ]
        if not wanted:
            return
        futures = self.admin.create_topics(wanted, request_timeout=REQUEST_TIMEOUT_S)

        def wait() -> None:
            for name, fut in futures.items():
                try:
                    fut.result(REQUEST_TIMEOUT_S)
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                        continue
                    raise TransportError(f"creating topic {name!r} failed: {exc}") from exc

        await asyncio.to_thread(wait)

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        meta = await asyncio.to_thread(self.admin.list_topics, None, REQUEST_TIMEOUT_S)
        return {
            n: TopicDescription(n, len(meta.topics[n].partitions))
            for n in names
            if n in meta.topics and meta.topics[n].error is None
        }

    def producer(self, *, transactional_id: str | None = None, linger_ms: int = 5) -> KafkaProducer:
        config = {
            **self._base(),
            "linger.ms": linger_ms,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": PRODUCER_QUEUE_MESSAGES_MAX,
        }
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
        return KafkaProducer(self._with_extra(config, consumer=False), transactional_id is not None)

    def consumer(
        self,
        group_id: str | None,
        *,
        isolation_level: IsolationLevel = "read_uncommitted",
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        client_id: str | None = None,
    ) -> KafkaConsumer:
        config = {
            **self._base(),
            "group.id": group_id or "flowbus-unmanaged",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset,
            "isolation.level": isolation_level,
            "enable.partition.eof": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            # librdkafka >= 2.1 stops fetching for this long whenever its prefetch queue is full;
            # its 1 s default starves a worker that drains the queue in bursts (5x slower).
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        }
        if client_id:
            config["client.id"] = client_id
        return KafkaConsumer(self._with_extra(config, consumer=True))

    # -- administration ---------------------------------------------------------------------
    # Every call waits at most ``timeout_s`` (REQUEST_TIMEOUT_S by default) on a worker thread;
    # librdkafka's futures are waited on there too, so the event loop never blocks.

    def _timeout_s(self, timeout_s: float | None) -> float:
        return REQUEST_TIMEOUT_S if timeout_s is None else timeout_s

    async def list_topics(self, *, timeout_s: float | None = None) -> list[str]:
        wait_s = self._timeout_s(timeout_s)
        try:
            meta = await asyncio.to_thread(self.admin.list_topics, None, wait_s)
        except KafkaException as exc:
            what = f"listing topics of {self.bootstrap}"
            raise (self._refused_login(what) or _admin_error(exc, what)) from exc
        return sorted(name for name, topic in meta.topics.items() if topic.error is None)

    async def delete_topics(self, names: Sequence[str], *, timeout_s: float | None = None) -> None:
        if not names:
            return
        wait_s = self._timeout_s(timeout_s)
        futures = self.admin.delete_topics(list(names), request_timeout=wait_s, operation_timeout=wait_s)

        def wait() -> None:
            errors: list[TransportError] = []
            for name, fut in futures.items():
                try:
                    fut.result(wait_s)
                except (KafkaException, TimeoutError) as exc:
                    errors.append(_admin_error(exc, f"deleting topic {name!r}"))
            if errors:
                # An unreachable broker matters more than a missing name; report it first.
                errors.sort(key=lambda e: not isinstance(e, BrokerUnavailableError))
                raise errors[0]

        await asyncio.to_thread(wait)

    async def topic_configs(self, name: str, *, timeout_s: float | None = None) -> dict[str, str]:
        wait_s = self._timeout_s(timeout_s)
        resource = ConfigResource(ResourceType.TOPIC, name)
        futures = self.admin.describe_configs([resource], request_timeout=wait_s)

        def wait() -> dict[str, str]:
            try:
                entries = futures[resource].result(wait_s)
            except (KafkaException, TimeoutError) as exc:
                raise _admin_error(exc, f"describing topic {name!r}") from exc
            return {
                key: entry.value or ""
                for key, entry in entries.items()
                # librdkafka hands sources over as ints or as the enum, depending on the call.
                if entry.source in (ConfigSource.DYNAMIC_TOPIC_CONFIG, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
            }

        return await asyncio.to_thread(wait)

    async def watermarks(
        self, partitions: Sequence[TopicPartition], *, timeout_s: float | None = None
    ) -> dict[TopicPartition, Watermarks]:
        if not partitions:
            return {}
        wait_s = self._timeout_s(timeout_s)
        deadline = time.monotonic() + wait_s
        parts = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]

        def wait(earliest: dict[Any, Any], latest: dict[Any, Any], left_s: float) -> dict[TopicPartition, Watermarks]:
            out: dict[TopicPartition, Watermarks] = {}
            for low_key, low_fut in earliest.items():
                tp = TopicPartition(low_key.topic, low_key.partition)
                high_fut = next(f for k, f in latest.items() if (k.topic, k.partition) == tp)
                out[tp] = Watermarks(low_fut.result(left_s).offset, high_fut.result(left_s).offset)
            return out

        while True:
            left_s = max(deadline - time.monotonic(), 0.001)
            earliest = self.admin.list_offsets({p: OffsetSpec.earliest() for p in parts}, request_timeout=left_s)
            latest = self.admin.list_offsets({p: OffsetSpec.latest() for p in parts}, request_timeout=left_s)
            try:
                return await asyncio.to_thread(wait, earliest, latest, left_s)
            except (KafkaException, TimeoutError) as exc:
                err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
                code = err.code() if isinstance(err, KafkaError) else None
                # Right after a broker restart librdkafka knows no partition leader yet and fails
                # at once ("No leaders found"): ask again until the deadline.
                if code not in _LEADER_UNKNOWN_CODES or time.monotonic() + WATERMARKS_RETRY_S >= deadline:
                    raise _admin_error(exc, f"listing offsets of {', '.join(f'{p.topic}[{p.partition}]' for p in parts)}") from exc
            await asyncio.sleep(WATERMARKS_RETRY_S)

    async def list_groups(self, *, timeout_s: float | None = None) -> list[GroupSummary]:
        wait_s = self._timeout_s(timeout_s)
        future = self.admin.list_consumer_groups(request_timeout=wait_s)
        try:
            listed = await asyncio.to_thread(future.result, wait_s)
        except (KafkaException, TimeoutError) as exc:
            raise _admin_error(exc, f"listing groups of {self.bootstrap}") from exc
        if listed.errors:
            log.warning("listing groups: %s", "; ".join(str(e) for e in listed.errors))
        return sorted((GroupSummary(g.group_id, _group_state(g.state)) for g in listed.valid), key=lambda g: g.group_id)

    async def describe_group(self, group_id: str, *, timeout_s: float | None = None) -> GroupDescription:
        wait_s = self._timeout_s(timeout_s)
        futures = self.admin.describe_consumer_groups([group_id], request_timeout=wait_s)
        try:
            described = await asyncio.to_thread(futures[group_id].result, wait_s)
        except (KafkaException, TimeoutError) as exc:
            err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return GroupDescription(group_id, "Dead")  # newer brokers say so instead of Dead
            raise _admin_error(exc, f"describing group {group_id!r}") from exc
        members = tuple(
            GroupMember(
                m.member_id, m.client_id or "", m.host or "",
                tuple(TopicPartition(p.topic, p.partition) for p in (m.assignment.topic_partitions if m.assignment else [])),
            )
            for m in described.members
        )
        return GroupDescription(group_id, _group_state(described.state), members)

    async def group_offsets(
        self, group_id: str, *, timeout_s: float | None = None
    ) -> dict[TopicPartition, int]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        wait_s = self._timeout_s(timeout_s)
        futures = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id)], request_timeout=wait_s)
        try:
            found = await asyncio.to_thread(futures[group_id].result, wait_s)
        except (KafkaException, TimeoutError) as exc:
            raise _admin_error(exc, f"fetching offsets of group {group_id!r}") from exc
        return {
            TopicPartition(p.topic, p.partition): p.offset
            for p in found.topic_partitions or []
            if p.error is None and p.offset >= 0
        }
