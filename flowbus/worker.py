"""The worker: one consumer-group member running every agent, dataflow and timer of an app.

Flow of one loop turn: commit if the commit interval passed, resume partitions whose channels
drained, poll a batch, and dispatch it — dataflows run synchronously on the batch (a compiled
chain of function calls per record), agents get the records through their bounded channels.

Delivery guarantees:

* ``at_least_once`` — offsets are committed after the events are processed and the producer is
  flushed, so a crash replays, never loses;
* ``at_most_once`` — a polled batch's offsets are committed before it is dispatched, so a crash
  loses, never replays;
* ``exactly_once`` — outputs and input offsets go in one transaction; inputs are read
  ``read_committed``; before each commit every agent is brought to an event boundary so no
  half-processed event's output is committed without its offset or the other way round.

Revocation: agents finish the event in hand (the channels' gates close and the worker waits for
each to be idle), offsets are committed, and the buffered records of the revoked partitions are
dropped from the channels — they were not committed, so their new owner reads them again.

Fencing (exactly-once, KIP-447): every transaction that sent anything commits input offsets with
the consumer's group metadata, and the group refuses them from a member it moved on without (a
worker paused until its partitions went elsewhere). The worker then aborts the transaction,
drops everything it processed since its last commit on every partition, and rejoins the group;
nothing of the fenced transaction is ever visible. Each worker's transactional id is its own
(:mod:`flowbus.transactional_id`), so workers of one app never fence each other's producers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from operator import length_hint
from time import perf_counter
from typing import TYPE_CHECKING, Any

from flowbus.app_errors import AgentError, DecodeError
from flowbus.context import current_source
from flowbus.metrics.worker_stats import WorkerStats
from flowbus.operators import compile_dataflows
from flowbus.operators.steps import DirectSink, Emit, fan_out
from flowbus.pages import member_client_id
from flowbus.stream import Channel, Stream
from flowbus.timers import run_crontab, run_timer
from flowbus.transactional_id import TransactionalIdSlot, claim_slot, process_transactional_id, take_orphans
from flowbus.transports.base import (
    Consumer,
    Producer,
    Record,
    RecordRun,
    TopicPartition,
    TopicSpec,
    Transport,
)
from flowbus.transports.errors import CommitError, GroupFencedError, ProducerFencedError, TransactionError

if TYPE_CHECKING:
    from flowbus.agent import Agent
    from flowbus.app import App
    from flowbus.state.manager import StateManager
    from flowbus.state.table import Table
    from flowbus.topic import Topic

log = logging.getLogger("flowbus.worker")

MAX_POLL_RECORDS = 2_000
"""Records per poll; also the most a full channel can overshoot its limit by, since a polled
batch is always delivered whole (pausing stops the *next* fetch, nothing is ever dropped)."""
POLL_TIMEOUT_MS = 100
TRANSACTION_LINGER_MS = 1
"""The transactional producer's linger (5 ms otherwise): every commit waits for what is still
lingering to be sent and acknowledged, and under exactly-once a busy worker commits ten times a
second. Measured on 200,000 windowed clicks over kafka:// (medians of 6 interleaved runs): the
commits' flushes took 46 ms in all instead of 84 ms, and the run 295k clicks/s instead of 281k."""
AGENT_RESTARTS_WITHOUT_PROGRESS_MAX = 10
"""An agent that keeps failing outside any event is stopped after this many restarts in a row."""


class Worker:
    """Runs an :class:`~flowbus.app.App` on a transport until stopped."""

    def __init__(self, app: App, transport: Transport | None = None) -> None:
        self.app = app
        self.transport = transport if transport is not None else app.transport
        self.clock = app.clock
        self.scheduler = app.scheduler
        self.guarantee = app.processing_guarantee
        self.exactly_once = self.guarantee == "exactly_once"
        self.at_most_once = self.guarantee == "at_most_once"
        self.commit_interval_ms = app.commit_interval_ms
        self.max_poll_records = app.max_poll_records
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.channels: list[Channel] = []
        self.routes: dict[str, list[list[Channel]]] = {}
        self.heads: dict[str, list[Emit]] = {}
        self.record_reading_sources: set[str] = set()
        """Source topics with a dataflow step reading each record (see :meth:`_make_runner`)."""
        self.runners: dict[str, Callable[[RecordRun], None]] = {}
        self.dispatched_next: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.paused: dict[TopicPartition, list[Channel]] = {}
        self.assigned: set[TopicPartition] = set()
        self.before_commit_hooks: list[Callable[[], None]] = []
        self.stopping = asyncio.Event()
        self.commit_guard = asyncio.Lock()
        """Held by timer and cron runs and by commits, so a timer's sends never straddle a commit."""
        self.drained = asyncio.Event()
        self.failure: BaseException | None = None
        self.started = False
        self.closing = False
        self.next_commit_ms = 0
        self.events_in = 0
        self.stats = WorkerStats(self.clock.now_ms)
        """Counters for the metrics (flowbus/metrics/): events, latencies, commits."""
        self.dispatch_ms = 0
        """Monotonic time of the batch being dispatched (see :attr:`Runtime.dispatch_ms`)."""
        self.leader_topic: str | None = None
        self.state: StateManager | None = None
        self.restoring: set[TopicPartition] = set()
        """Source partitions held back (paused) until the state they feed is restored."""
        self.rewind: dict[TopicPartition, int] = {}
        """For a held partition, the first offset of a record fetched and dropped meanwhile."""
        self.transactional_id: str | None = None
        """Under exactly-once, the id this worker's producer uses (the app's, or its slot's)."""
        self.txn_slot: TransactionalIdSlot | None = None
        self._txn_records_at_begin = 0
        """``producer.records_sent`` when the open transaction began: did it send anything?"""
        self.fenced: set[TopicPartition] = set()
        """Partitions dropped because the group fenced a commit, until the rejoin assigns anew:
        their records still polled meanwhile are ignored (their owner reads them again)."""
        self.fencings = 0
        """Commits the group refused (KIP-447) so far."""
        self.failed_transactions = 0
        """Transactions aborted after a failed commit (the worker went on from the committed offsets)."""
        self.revoking = False
        self.web_url: str | None = None
        """This worker's web server (``--web``), set before :meth:`start`: it goes into the
        consumer's client id, where the other workers of the group find it to forward table
        queries (:mod:`flowbus.web.routing`)."""
        self._tasks: list[asyncio.Task[Any]] = []
        self._agent_tasks: list[asyncio.Task[Any]] = []
        self._deadline_tasks: set[asyncio.Task[None]] = set()
        self.forced = False
        """Set by :meth:`force_stop`: shut down without waiting for agents or committing."""
        self._final_commit: asyncio.Task[None] | None = None

    # -- start ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Create topics, start the producer (and its first transaction), agents, timers and tasks."""
        app = self.app
        await self.transport.start()
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="flowbus-scheduler"))
        if any(t.on_leader for t in app.timers) or any(c.on_leader for c in app.crontabs):
            self.leader_topic = f"{app.id}-__leader"
        specs = [t.spec(app.topic_partitions) for t in app.topics.values()]
        if self.leader_topic:
            specs.append(TopicSpec(self.leader_topic, 1))
        await self.transport.create_topics(specs)
        if self.exactly_once:
            await self._start_transactions()
        else:
            self.producer = self.transport.producer()
        assert self.producer is not None
        app._attach_producer(self.producer)
        compile_dataflows(app.dataflows, self)
        for table in app.tables.values():
            table.attach(self)  # faust-style windowed tables arm their idle close through the worker
        self._build_runners()
        for agent in app.agents:
            self._start_agent(agent)
        sources = sorted(set(self.runners) | set(self.routes) | ({self.leader_topic} if self.leader_topic else set()))
        if app.tables:
            self.state = app.make_state_manager(self.transport, on_failure=self.fail)
            await self.state.start(sources, sorted(self.routes) or sources)
        self.consumer = self.transport.consumer(
            app.id,
            isolation_level="read_committed" if self.exactly_once else "read_uncommitted",
            client_id=member_client_id(f"{app.id}-{socket.gethostname()}-{os.getpid()}", self.web_url),
        )
        if sources:
            self.consumer.subscribe(sources, on_assigned=self._on_assigned, on_revoked=self._on_revoked)
        for spec in app.timers:
            self._tasks.append(asyncio.create_task(run_timer(spec, self.scheduler, self.is_leader, self.commit_guard)))
        for cron in app.crontabs:
            self._tasks.append(asyncio.create_task(run_crontab(cron, self.scheduler, self.is_leader, self.commit_guard)))
        for fn in app.startup_tasks:
            self._tasks.append(asyncio.create_task(self._run_task(fn)))
        self.next_commit_ms = self.clock.monotonic_ms() + self.commit_interval_ms
        self.started = True
        if not (sources or app.tables or app.timers or app.crontabs or app.startup_tasks):
            # Usually the decorators ran on another App object, or -A names the wrong module:
            # say so rather than run silently with nothing to do.
            log.warning(
                "app %r has no agents, dataflows, tables, timers, crontabs or tasks: this worker has "
                "nothing to run (were they declared on another App, or does -A name the wrong module?)",
                app.id,
            )

    async def _start_transactions(self) -> None:
        """The transactional producer and its first transaction.

        Its id is the app's when one is given, else this worker's slot's (see
        :mod:`flowbus.transactional_id`): the first InitProducerId fences the slot's previous
        holder and ends the transaction it left open. Then the transactions that orphaned
        slots of the same state directory left open are ended too, so a dead worker's
        transaction is not left for the coordinator's timeout. ``memory://`` keeps nothing
        past the process: an id unique to the process is enough there.
        """
        app = self.app
        tid = app.transactional_id
        if tid is None and self.transport.url.startswith("memory://"):
            tid = process_transactional_id(app.id)
        elif tid is None:
            self.txn_slot = claim_slot(app.id, app.resolved_state_dir())
            tid = self.txn_slot.transactional_id
        self.transactional_id = tid
        log.info("exactly-once with transactional id %s", tid)
        self.producer = self.transport.producer(transactional_id=tid, linger_ms=TRANSACTION_LINGER_MS)
        await self.producer.init_transactions()
        if self.txn_slot is not None and self.txn_slot.orphaned:
            log.info("transactional id %s: ended what its previous worker (dead) left open", tid)
        self._begin_transaction()
        if self.txn_slot is not None:
            await self._end_orphaned_transactions(self.txn_slot.index)

    async def _end_orphaned_transactions(self, own_index: int) -> None:
        """One InitProducerId per orphaned slot (its worker died and nobody took the slot since)."""
        for orphan in take_orphans(self.app.id, self.app.resolved_state_dir(), skip={own_index}):
            try:
                producer = self.transport.producer(transactional_id=orphan.transactional_id)
                try:
                    await producer.init_transactions()
                finally:
                    await producer.close()
                log.info("transactional id %s: ended what its worker (dead) left open", orphan.transactional_id)
            except Exception as exc:  # noqa: BLE001 - the coordinator's timeout ends it then
                log.warning("could not end the transaction of %s (its timeout will): %r", orphan.transactional_id, exc)
            finally:
                orphan.release()

    def _begin_transaction(self) -> None:
        assert self.producer is not None
        self.producer.begin_transaction()
        self._txn_records_at_begin = self.producer.records_sent

    async def _run_task(self, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("task %s failed", getattr(fn, "__qualname__", fn))

    def is_leader(self) -> bool:
        """True when this worker owns the app's leader partition (always, without leader timers)."""
        if self.leader_topic is None:
            return True
        return TopicPartition(self.leader_topic, 0) in self.assigned

    # -- dataflow runtime (flowbus.operators.steps.Runtime) ----------------------------------
    def sender(self, topic: Topic) -> Emit:
        """A dataflow output to ``topic`` whose records keep the timestamp and headers of the input
        record being processed, as Kafka Streams does: event time survives ``group_by`` and
        ``through``, so windows downstream of a repartition see the original times. Outside any
        record (a ``take`` deadline or a commit flushing it) the transport stamps the send time
        and no headers are sent."""
        assert self.producer is not None, "dataflows are compiled after the producer starts"
        send_raw = self.producer.sender_for(topic.name)
        encode_value = topic.value_codec.encode
        encode_key = topic.key_codec.encode
        get_source = current_source.get

        def send(key: Any, value: Any) -> None:
            source = get_source()
            if type(source) is Record:
                # A negative timestamp means "none" (pre-0.10 records): let the transport stamp one.
                timestamp_ms = source.timestamp_ms
                send_raw(None if key is None else encode_key(key), encode_value(value),
                         timestamp_ms if timestamp_ms >= 0 else None, source.headers)
            else:
                send_raw(None if key is None else encode_key(key), encode_value(value))

        send.direct = DirectSink(topic.key_codec, encode_value, send_raw)  # type: ignore[attr-defined]
        return send

    def call_at_ms(self, delay_ms: int, callback: Callable[[], None]) -> None:
        """Run a dataflow step's deadline (take's ``within_s``) outside any commit in progress."""

        async def guarded() -> None:
            async with self.commit_guard:
                callback()

        def spawn() -> None:
            task = asyncio.get_running_loop().create_task(guarded())
            self._deadline_tasks.add(task)
            task.add_done_callback(self._deadline_tasks.discard)

        self.scheduler.call_at(self.clock.monotonic_ms() + delay_ms, spawn)

    def idle_check(
        self,
        delay_ms: int,
        tp: TopicPartition | Sequence[TopicPartition],
        callback: Callable[[bool], None],
        idle: Callable[[], bool] | None = None,
    ) -> None:
        """After ``delay_ms``, tell ``callback`` whether ``tp`` is caught up, under the commit guard
        (so what it emits lands in one commit); skipped once ``tp`` is revoked. ``tp`` may be
        several partitions (a table fed by several topics): caught up means every one still
        assigned is, and the check is skipped once none of them is assigned. When ``idle()``
        says the partition is not idle, ``callback(False)`` is called without asking anything:
        a busy partition costs no lookup."""
        tps = (tp,) if isinstance(tp, TopicPartition) else tuple(tp)

        async def check() -> None:
            live = [p for p in tps if p in self.assigned]
            if not live:
                return
            if idle is not None and not idle():
                async with self.commit_guard:
                    if not self.closing:
                        callback(False)
                return
            try:
                caught_up = True
                for p in live:
                    caught_up = caught_up and await self._caught_up(p)
            except Exception as exc:  # noqa: BLE001 - a broker hiccup means "not now", not a crash
                log.debug("could not tell whether %s is caught up: %r", live, exc)
                caught_up = False
            async with self.commit_guard:
                if any(p in self.assigned for p in tps) and not self.closing:
                    callback(caught_up)

        def spawn() -> None:
            task = asyncio.get_running_loop().create_task(check())
            self._deadline_tasks.add(task)
            task.add_done_callback(self._deadline_tasks.discard)

        self.scheduler.call_at(self.clock.monotonic_ms() + delay_ms, spawn)

    async def _caught_up(self, tp: TopicPartition) -> bool:
        """True when everything of ``tp`` in the log (up to the last stable offset under
        read_committed) was polled and processed: not held back, nothing buffered for agents."""
        if tp in self.restoring or tp in self.paused or self.consumer is None:
            return False
        if any(channel.outstanding.get(tp) for channel in self.channels):
            return False
        cached = self.consumer.caught_up_cached(tp)
        if cached is not None:
            return cached
        position = self.consumer.position(tp)
        if position is None:
            return False
        end = (await self.consumer.end_offsets([tp]))[tp]
        return position >= end

    def table_sources(self, table: Table, partition: int) -> list[TopicPartition]:
        """The assigned source partitions whose events may update ``partition`` of ``table``:
        those feeding its partition database (same partition number and count)."""
        if self.state is None:
            return []
        return sorted(self.state.feeders.get((table.partitions, partition), ()))

    def commit_soon(self, within_ms: int) -> None:
        """Under exactly-once, outputs are readable only once committed: bring the next commit
        forward. Otherwise they are readable once sent, and the commit interval stands."""
        if self.exactly_once:
            self.next_commit_ms = min(self.next_commit_ms, self.clock.monotonic_ms() + within_ms)

    def before_commit(self, callback: Callable[[], None]) -> None:
        self.before_commit_hooks.append(callback)

    def add_source(self, topic: Topic, head: Emit, *, reads_record: bool = True) -> None:
        self.heads.setdefault(topic.name, []).append(head)
        if reads_record:
            self.record_reading_sources.add(topic.name)

    def _build_runners(self) -> None:
        for name, heads in self.heads.items():
            self.runners[name] = self._make_runner(
                self.app.topics[name], fan_out(heads), per_record=name in self.record_reading_sources
            )

    def _make_runner(self, topic: Topic, head: Emit, *, per_record: bool = True) -> Callable[[RecordRun], None]:
        """The function running a run of ``topic`` (records of one partition) through ``head``.

        ``per_record``: the current source is set to each record in turn, for chains with a step
        reading the record (:attr:`~flowbus.operators.steps.Step.reads_record`); otherwise once, to
        the run's first record, which tells its topic and partition, and the chain takes the
        run's keys and values without a :class:`Record` being made for each."""
        decode_key = topic.key_codec.decode
        decode_value = topic.value_codec.decode
        key_bytes_decode = topic.key_codec.decode_bytes
        value_bytes_decode = topic.value_codec.decode_bytes
        handle = self.handle_error
        set_source = current_source.set
        where = f"dataflow on {topic.name}"

        def run_records(run: RecordRun) -> None:
            # The source is each record itself (its partition for tables, its timestamp and
            # headers for outputs), and None once the run is over, so what runs later in this
            # task (a commit flushing a take) is not taken for part of the last record.
            try:
                for record in run.records():
                    set_source(record)
                    key, value = record.key, record.value
                    try:
                        try:
                            key = None if key is None else key_bytes_decode(key)
                            value = None if value is None else value_bytes_decode(value)
                        except Exception:  # noqa: BLE001 - the codec's own decode says what is wrong
                            key, value = decode_key(record.key), decode_value(record.value)
                        head(key, value)
                    except Exception as exc:  # noqa: BLE001 - every failure goes to the error policy
                        handle(exc, [record], where)
            finally:
                set_source(None)

        def run_columns(run: RecordRun) -> None:
            raw_keys, raw_values = run.keys_values()
            # Which record failed, should one: a list iterator's length hint is what it has left.
            key_iter = iter(raw_keys)
            try:
                set_source(run.record(0))
                for raw_key, raw_value in zip(key_iter, raw_values):
                    try:
                        try:
                            key = None if raw_key is None else key_bytes_decode(raw_key)
                            value = None if raw_value is None else value_bytes_decode(raw_value)
                        except Exception:  # noqa: BLE001 - the codec's own decode says what is wrong
                            key, value = decode_key(raw_key), decode_value(raw_value)
                        head(key, value)
                    except Exception as exc:  # noqa: BLE001 - every failure goes to the error policy
                        handle(exc, [run.record(run.count - length_hint(key_iter) - 1)], where)
            finally:
                set_source(None)

        return run_records if per_record else run_columns

    # -- agents -----------------------------------------------------------------------------
    def _start_agent(self, agent: Agent) -> None:
        channels = []
        for index in range(agent.concurrency):
            channel = Channel(f"{agent.name}#{index}", agent.max_buffered_events)
            channel.on_drained = self.drained.set
            channel.stats = self.stats.topic(agent.topic.name)
            channels.append(channel)
            self.channels.append(channel)
            self._agent_tasks.append(
                asyncio.create_task(self._supervise(agent, channel), name=f"flowbus-agent-{channel.name}")
            )
        self.routes.setdefault(agent.topic.name, []).append(channels)

    async def _supervise(self, agent: Agent, channel: Channel) -> None:
        """Run one agent instance; on an exception apply the error policy and restart it."""
        restarts = 0
        try:
            while True:
                stream = Stream(agent.topic, channel, self.scheduler, lambda exc, recs: self.handle_error(exc, recs, agent.name))
                processed_before = channel.processed_events
                try:
                    result = agent.fn(stream)
                    if inspect.isasyncgen(result):
                        async for out in result:
                            await agent.emit(out)
                    else:
                        await result  # type: ignore[misc]
                    if not self.stopping.is_set():
                        # Its partitions cannot progress any more (their events are never
                        # processed, so never committed): say so loudly rather than stall silently.
                        log.error("agent %s returned; events of %s stay unprocessed until restart",
                                  agent.name, agent.topic.name)
                    return
                except asyncio.CancelledError:
                    raise
                except AgentError:
                    return  # the error policy already stopped the worker
                except Exception as exc:  # noqa: BLE001
                    records = list(channel.in_flight)
                    channel.in_flight.clear()
                    try:
                        self.handle_error(exc, records, agent.name)
                    except AgentError:
                        return
                    for record in records:
                        channel.ack(record)
                    restarts = 0 if channel.processed_events > processed_before or records else restarts + 1
                    if restarts >= AGENT_RESTARTS_WITHOUT_PROGRESS_MAX:
                        self.fail(exc)
                        return
        finally:
            channel.idle.set()

    # -- errors -----------------------------------------------------------------------------
    def handle_error(self, exc: BaseException, records: list[Record], where: str) -> None:
        """Apply the app's error policy to a failure while processing ``records``.

        ``stop`` stops the worker and raises :class:`AgentError`; ``dead_letter`` sends each
        record's original bytes to the dead-letter topic with error headers; ``log`` (or ``skip``)
        only logs. Every failure is logged with topic, partition and offset.
        """
        policy = self.app.error_policy
        if not records:
            log.error("%s failed outside any event: %r", where, exc, exc_info=exc)
        for record in records:
            log.error(
                "%s failed on %s[%d]@%d (policy %s): %r",
                where, record.topic, record.partition, record.offset, policy, exc,
                exc_info=None if isinstance(exc, DecodeError) else exc,
            )
        if policy == "stop":
            self.fail(exc)
            raise AgentError(f"{where} failed and the error policy is 'stop': {exc!r}") from exc
        if policy == "dead_letter" and self.producer is not None:
            topic = self.app.dead_letter_topic
            for record in records:
                headers = record.headers + (
                    ("flowbus.error.type", type(exc).__name__.encode()),
                    ("flowbus.error.message", str(exc).encode(errors="replace")[:4096]),
                    ("flowbus.error.where", where.encode()),
                    ("flowbus.source.topic", record.topic.encode()),
                    ("flowbus.source.partition", str(record.partition).encode()),
                    ("flowbus.source.offset", str(record.offset).encode()),
                )
                self.producer.send_soon(topic.name, record.value, record.key, headers=headers)

    def fail(self, exc: BaseException) -> None:
        """Stop the worker because of ``exc``; :meth:`run` raises it as an :class:`AgentError`."""
        if self.failure is None:
            self.failure = exc
        self.stopping.set()

    def stop(self) -> None:
        """Ask the worker to shut down cleanly (what SIGTERM does)."""
        self.stopping.set()

    def force_stop(self) -> None:
        """Stop without waiting for agents (a second Ctrl-C): the agents' tasks are cancelled in
        the event they are in, and the final commit is skipped (under exactly-once the open
        transaction is aborted). Nothing is lost: what was processed since the last commit is
        processed again by the partitions' next owner, as after a crash."""
        self.forced = True
        self.stopping.set()
        for task in self._agent_tasks:
            task.cancel()
        if self._final_commit is not None:
            self._final_commit.cancel()

    def busy_agents(self) -> list[str]:
        """What a stop waits for: each agent instance in the middle of an event, with the event's
        ``topic[partition]@offset`` (several for a ``take`` list), e.g. ``shop.enrich#0 (orders[2]@17)``."""
        busy = []
        for channel, task in zip(self.channels, self._agent_tasks, strict=True):
            if task.done() or channel.idle.is_set():
                continue
            where = ", ".join(f"{r.topic}[{r.partition}]@{r.offset}" for r in channel.in_flight[:3])
            more = len(channel.in_flight) - 3
            if more > 0:
                where += f" and {more} more"
            busy.append(f"{channel.name} ({where})" if where else channel.name)
        return busy

    async def lag(self) -> int | None:
        """Records of the assigned partitions not processed yet: each partition's end offset minus
        the offset of its next record to process (buffered and in-flight records count as not
        processed; before anything was dispatched, the group's committed offset is that point).
        ``None`` when nothing is assigned. This is what ``flowbus groups describe`` shows as LAG
        once the worker has committed."""
        consumer = self.consumer
        if consumer is None or not self.assigned:
            return None
        assigned = sorted(self.assigned)
        processed = self.processed_offsets()
        unknown = [tp for tp in assigned if tp not in processed]
        if unknown:
            for tp, offset in (await consumer.committed(unknown)).items():
                processed[tp] = offset if offset is not None else 0
        ends = await consumer.end_offsets(assigned)
        return sum(max(0, end - processed.get(tp, 0)) for tp, end in ends.items() if tp in self.assigned)

    def processed_offsets(self) -> dict[TopicPartition, int]:
        """For each assigned partition this worker knows it for: the offset of the next record to
        process (the first buffered or in-flight one, else the one after the last dispatched,
        else the last commit)."""
        out: dict[TopicPartition, int] = {}
        for tp in self.assigned:
            offset = self.dispatched_next.get(tp)
            if offset is None:
                offset = self.committed.get(tp)
                if offset is None:
                    continue
            for channel in self.channels:
                if channel.outstanding.get(tp):
                    offset = min(offset, channel.acked_next[tp])
            out[tp] = offset
        return out

    # -- the loop ---------------------------------------------------------------------------
    async def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Start, loop until :meth:`stop` (or a ``stop``-policy failure), then shut down cleanly.

        ``on_started`` is called once start-up is done, before the first poll (``flowbus worker``
        freezes what start-up built then; see :func:`flowbus.cli.worker.freeze_startup_objects`)."""
        try:
            if not self.started:
                await self.start()
            if on_started is not None:
                on_started()
            while not self.stopping.is_set():
                await self.step(POLL_TIMEOUT_MS)
        except AgentError:
            pass
        finally:
            await self.shutdown()
        if self.failure is not None:
            raise AgentError(f"worker stopped: {self.failure!r}") from self.failure

    async def step(self, timeout_ms: int) -> int:
        """One turn of the loop; returns how many records were polled."""
        assert self.consumer is not None
        if self.clock.monotonic_ms() >= self.next_commit_ms:
            try:
                await self.commit()
            except CommitError as exc:
                # The group is rebalancing: the revocation callback commits these offsets.
                log.warning("periodic commit failed, retrying at the next one: %s", exc)
        if self.state is not None and self.state.ready_sources:
            self._release_restored()
        if self.paused:
            self.drained.clear()  # before checking, so a drain that happens next is not missed
            self._resume_drained()
            if self.paused and self.assigned and all(tp in self.paused for tp in self.assigned):
                try:
                    await asyncio.wait_for(self.drained.wait(), timeout_ms / 1000)
                except TimeoutError:
                    pass
                return 0
        runs = await self.consumer.poll_runs(self.max_poll_records, timeout_ms)
        if not runs:
            return 0
        if self.at_most_once:
            await self._commit_before(runs)
        return self.dispatch(runs)

    def dispatch(self, runs: list[RecordRun]) -> int:
        """Hand a polled batch, run by run, to dataflows (synchronously) and agents (through
        their channels); returns how many records it held."""
        self.dispatch_ms = self.clock.monotonic_ms()
        fenced = self.fenced
        total = 0
        for run in runs:
            tp = run.tp
            total += run.count
            if fenced and tp in fenced:
                # Fetched for the assignment the group fenced, before the rejoin revoked it: the
                # partition's owner reads these again from the committed offset.
                continue
            if tp in self.restoring:
                # Fetched before the pause took effect: read again once the state is restored.
                self.rewind.setdefault(tp, run.first_offset)
                continue
            topic = tp.topic
            topic_stats = self.stats.topic(topic)
            topic_stats.events_in += run.count
            runner = self.runners.get(topic)
            if runner is not None:
                started_s = perf_counter()
                runner(run)
                topic_stats.ran_run(run, perf_counter() - started_s)
            routes = self.routes.get(topic)
            if routes:
                records = run.records()
                for channels in routes:
                    channel = channels[tp.partition % len(channels)]
                    channel.put(tp, records)
                    if channel.full:
                        self._pause(tp, channel)
            self.dispatched_next[tp] = run.next_offset
        self.events_in += total
        return total

    def _pause(self, tp: TopicPartition, channel: Channel) -> None:
        blockers = self.paused.setdefault(tp, [])
        if channel not in blockers:
            blockers.append(channel)
        assert self.consumer is not None
        self.consumer.pause([tp])
        log.debug("paused %s: %s holds %d events", tp, channel.name, len(channel))

    def _resume_drained(self) -> None:
        ready = [tp for tp, chans in self.paused.items() if all(len(c) <= c.low_watermark_events for c in chans)]
        if ready:
            for tp in ready:
                del self.paused[tp]
            assert self.consumer is not None
            self.consumer.resume([tp for tp in ready if tp not in self.restoring])

    def _release_restored(self) -> None:
        """Resume the source partitions whose state finished restoring (rewinding any dropped)."""
        assert self.state is not None and self.consumer is not None
        for tp in self.state.take_ready():
            self.restoring.discard(tp)
            offset = self.rewind.pop(tp, None)
            if offset is not None:
                self.consumer.seek(tp, offset)
            if tp not in self.paused:
                self.consumer.resume([tp])

    # -- commits ----------------------------------------------------------------------------
    def committable(self) -> dict[TopicPartition, int]:
        """Offsets (next to read) that are safe to commit now and differ from the last commit."""
        out: dict[TopicPartition, int] = {}
        for tp, next_offset in self.dispatched_next.items():
            offset = next_offset
            for channel in self.channels:
                if channel.outstanding.get(tp):
                    offset = min(offset, channel.acked_next[tp])
            if self.committed.get(tp) != offset:
                out[tp] = offset
        return out

    async def _catch_up(self) -> None:
        """Let agents process every record a dataflow of the same topic already ran.

        A dataflow runs a record as soon as it is polled, an agent of the same topic later, from
        its channel; the offset committed for the partition is the lower of the two. Committing
        the dataflow's effects (outputs, table changes) before the agent caught up would replay
        those records through the dataflow after a restart or a rebalance: counted twice.
        """
        shared = {name for name in self.runners if name in self.routes}
        if not shared:
            return
        for channel, task in zip(self.channels, self._agent_tasks, strict=True):
            while not task.done() and any(n and tp.topic in shared for tp, n in channel.outstanding.items()):
                channel.idle.clear()
                await channel.idle.wait()

    async def _barrier(self) -> None:
        """Bring every agent to an event boundary: close the gates and wait until all are idle."""
        for channel in self.channels:
            channel.close_gate()
        for channel in self.channels:
            await channel.idle.wait()

    def _open_gates(self) -> None:
        for channel in self.channels:
            channel.open_gate()

    async def commit(self, *, barrier: bool = False) -> None:
        """Flush outputs and commit processed offsets (in the transaction under exactly-once)."""
        assert self.producer is not None and self.consumer is not None
        self.next_commit_ms = self.clock.monotonic_ms() + self.commit_interval_ms
        async with self.commit_guard:
            started_s = perf_counter()
            await self._commit_locked(barrier=barrier)
            self.stats.commits.observe(perf_counter() - started_s)

    async def _commit_locked(self, *, barrier: bool) -> None:
        assert self.producer is not None and self.consumer is not None
        if barrier or self.exactly_once:
            await self._catch_up()
            await self._barrier()
        state = self.state
        try:
            for hook in self.before_commit_hooks:
                hook()
            offsets = self.committable()
            # Table changes reach the changelogs inside the transaction (or before the offsets,
            # at least once); the local databases get them only once that is durable.
            collected = state.collect() if state is not None else []
            futures = state.produce(self.producer, collected) if collected else []
            try:
                if self.exactly_once:
                    await self.producer.flush()
                    if not offsets and self.producer.records_sent != self._txn_records_at_begin:
                        offsets = self._fencing_offsets()
                    if offsets:
                        await self.producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
                    await self.producer.commit_transaction()
                    self._begin_transaction()
                else:
                    await self.producer.flush()
                    # Without a transaction the flush is the point of no return: the changelog
                    # holds the changes now, whatever becomes of the offset commit below.
                    if collected:
                        state.store(collected, futures)  # type: ignore[union-attr]
                        collected = []
                    if offsets and not self.at_most_once:
                        await self.consumer.commit(offsets)
            except BaseException:
                if collected:
                    state.failed(collected)  # type: ignore[union-attr]
                raise
            if collected:
                state.store(collected, futures)  # type: ignore[union-attr]
            self.committed.update(offsets)
        except GroupFencedError as exc:
            # Still at the barrier (gates closed): nothing runs on the dropped partitions.
            await self._fenced(exc)
        except ProducerFencedError:
            raise  # another worker holds this transactional id now: this one must stop
        except TransactionError as exc:
            if not self.exactly_once or self.closing:
                raise  # the final commit: shutdown logs it and aborts
            # A commit that failed (a batch refused, the coordinator's error): the transaction
            # cannot commit, but nothing says another worker took over. Abort it and go on from
            # the committed offsets, as after a group fencing, instead of stopping the worker.
            self.failed_transactions += 1
            await self._fenced(exc, reason="the transaction failed to commit")
        finally:
            self._open_gates()

    def _fencing_offsets(self) -> dict[TopicPartition, int]:
        """Offsets for a transaction that sent records but read nothing new (a timer's sends,
        windows closed by the clock, a ``take`` flushed): each assigned partition's last
        committed (or starting) offset, unchanged. Sending them makes the commit name this
        member's generation, so a zombie's outputs are fenced by the group like any others
        (KIP-447); without offsets the transaction would commit without the group being asked."""
        assert self.consumer is not None
        out: dict[TopicPartition, int] = {}
        for tp in self.assigned:
            offset = self.committed.get(tp)
            if offset is None:
                offset = self.rewind.get(tp)  # fetched and dropped while restoring: resume there
            if offset is None and tp not in self.dispatched_next:
                offset = self.consumer.position(tp)  # nothing dispatched yet: where reading starts
            if offset is not None:
                out[tp] = offset
        return out

    async def _fenced(self, exc: TransactionError, *, reason: str = "fenced by the group") -> None:
        """The group moved on without this worker (KIP-447), or the transaction failed to commit:
        abort, drop everything, rejoin.

        Nothing of the transaction is committed: its outputs and table changes are aborted, its
        offsets were refused. Whatever this worker processed since its last commit is dropped
        for every partition (buffered events, uncommitted table changes, positions): the
        partitions' owners, this worker included after the rejoin, read them again from the
        committed offsets. Kafka Streams does the same ("task migrated": close all tasks dirty,
        unsubscribe, subscribe). Inside a revocation or at shutdown the group is being left or
        rejoined anyway, so only the rejoin is skipped there.
        """
        assert self.producer is not None and self.consumer is not None
        lost = sorted(self.assigned)
        if isinstance(exc, GroupFencedError):
            self.fencings += 1
        log.warning(
            "%s: %s; aborting the transaction, dropping %d partitions and rejoining", reason, exc, len(lost)
        )
        await self.producer.abort_transaction()
        self._begin_transaction()
        self.fenced.update(lost)
        await self._forget(lost)
        if not self.closing and not self.revoking:
            self.consumer.rejoin()

    async def _commit_before(self, runs: list[RecordRun]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for run in runs:
            offsets[run.tp] = run.next_offset
        await self.consumer.commit(offsets)  # type: ignore[union-attr]
        self.committed.update(offsets)

    # -- rebalance --------------------------------------------------------------------------
    async def _on_assigned(self, partitions: list[TopicPartition]) -> None:
        self.fenced.clear()  # a new assignment: its positions come from the committed offsets
        self.assigned.update(partitions)
        log.info("assigned %s", sorted(partitions))
        if self.state is not None:
            held = await self.state.assigned(partitions)
            if held:
                assert self.consumer is not None
                self.consumer.pause(held)
                self.restoring.update(held)

    async def _on_revoked(self, partitions: list[TopicPartition]) -> None:
        log.info("revoking %s", sorted(partitions))
        if not self.closing and self.failure is None:
            self.revoking = True
            try:
                await self.commit(barrier=True)
            except CommitError as exc:
                # Partitions lost rather than revoked (session expired): their new owner
                # replays from the last commit, which at-least-once allows.
                log.warning("commit on revocation failed: %s", exc)
            finally:
                self.revoking = False
        await self._forget(partitions)

    async def _forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop what this worker holds of these partitions: buffered events, positions, state."""
        gone = set(partitions)
        held = [tp for tp in gone if tp in self.paused or tp in self.restoring]
        if held and self.consumer is not None and not self.closing:
            # Forgotten here, a pause (backpressure, restore) would outlive the partition in the
            # consumer: given back to this worker later (after a fenced commit's rejoin, or a
            # rebalance), it would never be fetched again.
            self.consumer.resume(held)
        for channel in self.channels:
            channel.purge(gone)
        for tp in gone:
            self.assigned.discard(tp)
            self.dispatched_next.pop(tp, None)
            self.committed.pop(tp, None)
            self.paused.pop(tp, None)
            self.restoring.discard(tp)
            self.rewind.pop(tp, None)
        if self.state is not None:
            await self.state.revoked(gone)

    # -- shutdown ---------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Commit what was processed, leave the group, close producer and transport."""
        if self.closing:
            return
        self.closing = True
        for task in self._tasks:
            if task.get_name() != "flowbus-scheduler":
                task.cancel()
        for task in list(self._deadline_tasks):
            task.cancel()  # an idle check must not ask a consumer that is closing
        try:
            if self.started and self.producer is not None and self.consumer is not None:
                if (self.failure is not None or self.forced) and self.exactly_once:
                    await self.producer.abort_transaction()
                elif not self.forced:
                    # A task of its own, so that force_stop() can cancel a commit that waits
                    # for an agent stuck in its event.
                    self._final_commit = asyncio.create_task(self.commit(barrier=True))
                    try:
                        await self._final_commit
                    except asyncio.CancelledError:
                        if not self.forced:
                            raise
                        log.warning("forced stop: the final commit was skipped")
                        if self.exactly_once:
                            await self.producer.abort_transaction()
                    except Exception:
                        log.exception("final commit failed")
                        if self.exactly_once:
                            await self.producer.abort_transaction()
        finally:
            for task in self._agent_tasks:
                task.cancel()
            await asyncio.gather(*self._agent_tasks, return_exceptions=True)
            if self.consumer is not None:
                await self.consumer.close()
            if self.state is not None:
                await self.state.close()
            if self.producer is not None:
                if self.exactly_once and self.started:
                    try:
                        await self.producer.abort_transaction()
                    except Exception:
                        log.debug("aborting the empty last transaction failed", exc_info=True)
                await self.producer.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.app._detach_producer(self.producer)
            try:
                await self.transport.close()
            finally:
                if self.txn_slot is not None:
                    # Last: the id's last transaction has ended, so the slot is left clean.
                    self.txn_slot.release()
