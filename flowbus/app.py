"""The :class:`App`: where topics, agents, dataflows, timers and tasks are declared."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from flowbus.agent import Agent, AgentFun, Sink
from flowbus.app_errors import ConfigurationError
from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.operators.dataflow import Dataflow
from flowbus.operators.steps import GroupByStep
from flowbus.pages import PageSpec
from flowbus.operators.windowed import IDLE_MS_DEFAULT as WINDOW_IDLE_MS_DEFAULT
from flowbus.serializers import Serializer
from flowbus.state import MemoryBudget, make_backend
from flowbus.state.budget import STATE_CACHE_BYTES_DEFAULT, STATE_WRITE_BUFFER_BYTES_DEFAULT
from flowbus.state.manager import RESTORE_TIMEOUT_MS_DEFAULT, StateManager, default_state_dir
from flowbus.state.table import GlobalTable, Table
from flowbus.stream import DEFAULT_MAX_BUFFERED_EVENTS
from flowbus.timers import CronSpec, Scheduler, TimerSpec, parse_timezone
from flowbus.topic import Topic
from flowbus.transports import transport_from_url
from flowbus.transports.base import Producer, Transport

if TYPE_CHECKING:
    from flowbus.state.table import Table as StateTable  # in App's body, ``Table`` is the method
    from flowbus.testing import TestContext
    from flowbus.worker import Worker

log = logging.getLogger("flowbus.app")

ProcessingGuarantee = Literal["at_least_once", "at_most_once", "exactly_once"]
ErrorPolicy = Literal["log", "skip", "dead_letter", "stop"]
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T", bound="Table")

_GUARANTEES = ("at_least_once", "at_most_once", "exactly_once")
_POLICIES = ("log", "skip", "dead_letter", "stop")


class App:
    """A stream-processing application; one consumer group (``group.id == id``) per app.

    Args:
        id: the app's name; the consumer group id and the prefix of its internal topics.
        broker: ``embedded://DIR`` (default), ``kafka://host:port`` or ``memory://`` (tests).
            A kafka:// URL may carry a password (``USER:PASSWORD@``, ``sasl.password=``), but a
            secret in source code is discouraged: use ``sasl.password.file=PATH`` or
            ``sasl.password.env=VARNAME`` (``docs/security.md``). The command line refuses it.
        processing_guarantee: ``at_least_once`` (default), ``at_most_once`` or ``exactly_once``.
        error_policy: what happens to an event that cannot be decoded or whose processing raises:
            ``log`` (alias ``skip``: log it with topic/partition/offset and go on),
            ``dead_letter`` (send its original bytes with error headers to ``dead_letter_topic``)
            or ``stop`` (stop the worker without committing that event).
        dead_letter_topic: defaults to ``<id>-dead-letters``.
        clock: every timer, ``take(within_s)`` and commit interval reads this clock.
        topic_partitions: partitions of topics the app creates without an explicit count.
        commit_interval_ms: defaults to 1000 (100 under exactly-once, where it bounds latency).
        transactional_id: for exactly-once. By default (``None``) each worker claims its own,
            ``<id>-<hostname>-<state dir tag>-<n>``, the lowest slot ``n`` free among the
            workers sharing its state directory: several workers of one app run side by side on
            a host, and a restarted worker takes back the slot of the one that died and ends
            the transaction it left open (see :mod:`flowbus.transactional_id`). Zombies are
            fenced by the consumer group's generation (KIP-447), not by this id. An explicit id
            is used as given: each worker needs its own, stable across its restarts.
        state_dir: where tables keep their partition databases; ``<data dir>/state`` for
            ``embedded://`` and ``./flowbus-state`` otherwise.
        state_backend: ``rocksdb`` (default) or ``memory`` (small state, rebuilt from the
            changelog at every start).
        state_cache_bytes, state_write_buffer_bytes: the RocksDB block cache and write-buffer
            budget shared by every partition database of the worker.
        restore_timeout_ms: a table restore that makes no progress for this long stops the worker.
        window_idle_ms: a partition that saw no record for this long and is caught up lets its
            windows' watermark move on with the wall clock, so the last window of a quiet stream
            closes; ``None`` closes windows on event time only (see ``docs/windows.md``).

    Example:
        >>> app = App("clicks", broker="memory://")
        >>> clicks = app.topic("clicks")
        >>> @app.agent(clicks)
        ... async def count(stream):
        ...     async for click in stream:
        ...         ...
    """

    def __init__(
        self,
        id: str,
        *,
        broker: str = "embedded://./flowbus-data",
        processing_guarantee: ProcessingGuarantee = "at_least_once",
        error_policy: ErrorPolicy = "log",
        dead_letter_topic: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        topic_partitions: int = 1,
        commit_interval_ms: int | None = None,
        transactional_id: str | None = None,
        max_poll_records: int = 2_000,
        state_dir: str | Path | None = None,
        state_backend: str = "rocksdb",
        state_cache_bytes: int = STATE_CACHE_BYTES_DEFAULT,
        state_write_buffer_bytes: int = STATE_WRITE_BUFFER_BYTES_DEFAULT,
        restore_timeout_ms: int = RESTORE_TIMEOUT_MS_DEFAULT,
        window_idle_ms: int | None = WINDOW_IDLE_MS_DEFAULT,
    ) -> None:
        if processing_guarantee not in _GUARANTEES:
            raise ConfigurationError(f"processing_guarantee must be one of {_GUARANTEES}, not {processing_guarantee!r}")
        if error_policy not in _POLICIES:
            raise ConfigurationError(f"error_policy must be one of {_POLICIES}, not {error_policy!r}")
        if not re.fullmatch(r"[a-zA-Z0-9._-]+", id or ""):
            raise ConfigurationError(
                f"app id {id!r}: use only ASCII letters, digits, '.', '_' and '-' (it is the consumer group "
                f"id and the prefix of the app's topics, which Kafka's rule for topic names applies to)"
            )
        self.id = id
        self.broker = broker
        self.processing_guarantee: ProcessingGuarantee = processing_guarantee
        self.error_policy: ErrorPolicy = error_policy
        self.clock = clock
        self.topic_partitions = topic_partitions
        if commit_interval_ms is None:
            commit_interval_ms = 100 if processing_guarantee == "exactly_once" else 1_000
        self.commit_interval_ms = commit_interval_ms
        self.transactional_id: str | None = transactional_id or None
        """The explicit transactional id, or ``None``: each worker claims one (``Worker.transactional_id``)."""
        self.max_poll_records = max_poll_records
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.state_backend = state_backend
        self.state_cache_bytes = state_cache_bytes
        self.state_write_buffer_bytes = state_write_buffer_bytes
        self.restore_timeout_ms = restore_timeout_ms
        self.window_idle_ms = window_idle_ms
        self.tables: dict[str, Table] = {}
        self.topics: dict[str, Topic] = {}
        self.agents: list[Agent] = []
        self.dataflows: list[Dataflow] = []
        self.timers: list[TimerSpec] = []
        self.crontabs: list[CronSpec] = []
        self.startup_tasks: list[Callable[[], Any]] = []
        self.pages: list[PageSpec] = []
        """``@app.page`` handlers, served by ``flowbus worker --web`` (flowbus.web.pages)."""
        self.dead_letter_topic = self.topic(dead_letter_topic or f"{id}-dead-letters", value_serializer="raw", key_serializer="raw", internal=True)
        self._transport: Transport | None = None
        self._scheduler: Scheduler | None = None
        self._producer: Producer | None = None
        self._worker_producer: Producer | None = None
        self.worker: Worker | None = None

    def __repr__(self) -> str:
        # The repr lands in logs and tracebacks: a password in a kafka:// URL is masked.
        from flowbus.transports.kafka import redact_url

        return f"<App {self.id!r} broker={redact_url(self.broker)!r} {self.processing_guarantee}>"

    # -- declarations -----------------------------------------------------------------------
    def topic(
        self,
        name: str,
        *,
        key_type: Any = None,
        value_type: Any = None,
        partitions: int | None = None,
        key_serializer: str | Serializer | None = None,
        value_serializer: str | Serializer = "json",
        config: Mapping[str, str] | None = None,
        internal: bool = False,
    ) -> Topic:
        """Declare a topic (created at worker start if missing); declaring a name twice returns
        the first declaration, so modules can share topics by name."""
        existing = self.topics.get(name)
        if existing is not None:
            return existing
        topic = Topic(
            self,
            name,
            key_type=key_type,
            value_type=value_type,
            partitions=partitions,
            key_serializer=key_serializer,
            value_serializer=value_serializer,
            config=config,
            internal=internal,
        )
        self.topics[name] = topic
        return topic

    def agent(
        self,
        topic: Topic | str,
        *,
        name: str | None = None,
        concurrency: int = 1,
        sink: Sequence[Sink] | None = None,
        max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
        group_by: Callable[[Any], Any] | None = None,
    ) -> Callable[[AgentFun], Agent]:
        """Decorate ``async def agent(stream)``; values it ``yield``s go to every sink.

        With ``group_by=key_fn`` the agent reads ``topic`` re-keyed by ``key_fn(value)``: a
        dataflow repartitions it through ``<app>-<agent name>-repartition``, so all values with
        one key reach the same agent instance (on whichever worker owns that partition).
        """
        source = self._as_topic(topic)

        def decorate(fn: AgentFun) -> Agent:
            agent_name = name or f"{fn.__module__}.{fn.__qualname__}"
            agent_source = source
            if group_by is not None:
                safe = re.sub(r"[^a-zA-Z0-9._-]+", "-", agent_name).strip("-.")
                regrouped = self.stream(source).group_by(group_by, name=safe)
                step = regrouped.step
                assert isinstance(step, GroupByStep)
                agent_source = step.topic
            agent = Agent(
                self,
                fn,
                agent_source,
                name=agent_name,
                concurrency=concurrency,
                sinks=list(sink or ()),
                max_buffered_events=max_buffered_events,
            )
            self.agents.append(agent)
            return agent

        return decorate

    def Table(  # noqa: N802 - faust's name for it
        self,
        name: str,
        *,
        default: Callable[[], Any] | None = None,
        key_type: Any = None,
        value_type: Any = None,
        partitions: int | None = None,
        key_serializer: str | Serializer | None = None,
        value_serializer: str | Serializer = "json",
        on_window_close: Callable[[Any, Any], None] | None = None,
    ) -> Table:
        """Declare a table (see :class:`flowbus.state.table.Table`), changelogged to
        ``<id>-<name>-changelog``; used from agents as a dict: ``counts[word] += 1``.

        ``.tumbling(size)`` or ``.hopping(size, step)`` on it makes it windowed, faust style
        (:mod:`flowbus.state.window_tables`); ``on_window_close(key, value)`` is then called once
        per window as it closes, with ``key = (key, (start_s, end_s))``."""
        return self._add_table(Table(
            self, name, default=default, key_type=key_type, value_type=value_type, partitions=partitions,
            key_serializer=key_serializer, value_serializer=value_serializer, on_window_close=on_window_close,
        ))

    def GlobalTable(  # noqa: N802 - faust's name for it
        self,
        name: str,
        *,
        default: Callable[[], Any] | None = None,
        key_type: Any = None,
        value_type: Any = None,
        partitions: int | None = None,
        key_serializer: str | Serializer | None = None,
        value_serializer: str | Serializer = "json",
    ) -> GlobalTable:
        """Declare a table every worker holds in full, for lookups; it changes only through its
        changelog topic ``<id>-<name>-changelog`` (send records there to update it)."""
        return self._add_table(GlobalTable(
            self, name, default=default, key_type=key_type, value_type=value_type, partitions=partitions,
            key_serializer=key_serializer, value_serializer=value_serializer,
        ))

    def _add_table(self, table: T) -> T:
        if table.name in self.tables:
            raise ConfigurationError(f"a table named {table.name!r} is already declared")
        if not re.fullmatch(r"[a-zA-Z0-9._-]+", table.name):
            raise ConfigurationError(f"table name {table.name!r}: use letters, digits, '.', '_' and '-' (it names a topic)")
        self.tables[table.name] = table
        return table

    def resolved_state_dir(self) -> Path:
        return self.state_dir if self.state_dir is not None else default_state_dir(self.broker)

    def make_state_manager(self, transport: Transport, *, on_failure: Callable[[BaseException], None]) -> StateManager:
        """The state of one worker: its partition databases under :meth:`resolved_state_dir`."""
        budget = MemoryBudget(cache_bytes=self.state_cache_bytes, write_buffer_bytes=self.state_write_buffer_bytes)
        return StateManager(
            self.id, list(self.tables.values()), transport, make_backend(self.state_backend, budget),
            state_dir=self.resolved_state_dir(), clock=self.clock,
            restore_timeout_ms=self.restore_timeout_ms, on_failure=on_failure,
        )

    def stream(self, topic: Topic | str) -> Dataflow:
        """A declarative dataflow reading ``topic``: ``app.stream(src).filter(f).map(g).to(dst)``."""
        root = Dataflow(self, self._as_topic(topic))
        self.dataflows.append(root)
        return root

    def _dataflow_source(self, node: Dataflow) -> Topic | None:
        """The source topic of the dataflow tree ``node`` belongs to (for group_by's codecs)."""
        for root in self.dataflows:
            stack = [root]
            while stack:
                current = stack.pop()
                if current is node:
                    return root.source
                stack.extend(current.children)
        return None

    def timer(self, interval_s: float, *, on_leader: bool = False) -> Callable[[F], F]:
        """Run the decorated function (sync or async) every ``interval_s`` seconds of the app clock;
        with ``on_leader`` only on one worker of the group."""
        if interval_s <= 0:
            raise ConfigurationError("a timer interval must be positive")

        def decorate(fn: F) -> F:
            self.timers.append(TimerSpec(fn, int(interval_s * 1000), on_leader))
            return fn

        return decorate

    def crontab(self, expression: str, *, timezone: str | dt.tzinfo | None = None, on_leader: bool = False) -> Callable[[F], F]:
        """Run the decorated function on a cron schedule (croniter syntax) in ``timezone`` (UTC default)."""
        from croniter import croniter

        if not croniter.is_valid(expression):
            raise ConfigurationError(f"invalid cron expression {expression!r}")
        tz = parse_timezone(timezone)

        def decorate(fn: F) -> F:
            self.crontabs.append(CronSpec(fn, expression, tz, on_leader))
            return fn

        return decorate

    def page(
        self,
        path: str,
        *,
        method: str = "GET",
        name: str | None = None,
        table: StateTable | None = None,
        topic: Topic | str | None = None,
        key: str | None = None,
    ) -> Callable[[F], F]:
        """Serve ``async def handler(request)`` at ``path`` on the worker's web server (``--web``).

        The handler gets an :class:`aiohttp.web.Request` and returns an aiohttp response or any
        JSON-able object. With ``table=`` (or ``topic=``) and ``key=`` naming a part of the path
        (``/counts/{word}``, ``key="word"``), the request is answered by the worker that owns the
        key's partition: the others forward it there (faust's ``@app.table_route``). Pages are
        listed by ``GET /`` under ``page:<name>`` (the handler's name by default).

        Raises:
            ConfigurationError: ``key`` without ``table``/``topic`` (or the reverse), both given,
                or ``key`` not a ``{part}`` of ``path``.
        """
        if not path.startswith("/"):
            raise ConfigurationError(f"page path {path!r} must start with '/'")
        if table is not None and topic is not None:
            raise ConfigurationError(f"page {path!r}: route by a table or by a topic, not both")
        route_by: StateTable | Topic | None = table if table is not None else (
            self._as_topic(topic) if topic is not None else None)
        if (route_by is None) != (key is None):
            raise ConfigurationError(f"page {path!r}: routing needs both key= and table= (or topic=)")
        if key is not None and "{" + key + "}" not in path:
            raise ConfigurationError(f"page {path!r}: key={key!r} must name a part of the path ({{{key}}})")

        def decorate(fn: F) -> F:
            page_name = str(name or getattr(fn, "__name__", path))
            if any(p.name == page_name for p in self.pages):
                raise ConfigurationError(f"a page named {page_name!r} exists already (pass name=)")
            self.pages.append(PageSpec(path, method.upper(), fn, page_name, route_by, key))
            return fn

        return decorate

    def task(self, fn: F) -> F:
        """Run the decorated function once when the worker starts (after agents are running)."""
        self.startup_tasks.append(fn)
        return fn

    def _as_topic(self, topic: Topic | str) -> Topic:
        return self.topic(topic) if isinstance(topic, str) else topic

    # -- runtime ----------------------------------------------------------------------------
    @property
    def transport(self) -> Transport:
        """The transport for ``broker``, made on first use."""
        if self._transport is None:
            self._transport = transport_from_url(self.broker, clock=self.clock)
        return self._transport

    def use_transport(self, transport: Transport) -> None:
        """Use this transport instead of one made from ``broker`` (e.g. an embedded broker that listens)."""
        self._transport = transport

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = Scheduler(self.clock)
        return self._scheduler

    @property
    def producer(self) -> Producer:
        """The running worker's producer, else the one made by :meth:`ensure_producer`."""
        producer = self._worker_producer or self._producer
        if producer is None:
            raise ConfigurationError(f"app {self.id!r} is not running: start a worker or await app.ensure_producer()")
        return producer

    async def ensure_producer(self) -> Producer:
        """A producer for sending outside a worker (scripts, tests); the worker's one if running."""
        if self._worker_producer is not None:
            return self._worker_producer
        if self._producer is None:
            await self.transport.start()
            if self._producer is None:
                self._producer = self.transport.producer()
        return self._producer

    def _attach_producer(self, producer: Producer) -> None:
        self._worker_producer = producer

    def _detach_producer(self, producer: Producer | None) -> None:
        if self._worker_producer is producer:
            self._worker_producer = None

    async def create_topics(self) -> None:
        """Create every declared topic that does not exist yet (the worker does this at start;
        call it before producing from a script so topics get their declared partition counts)."""
        from flowbus.transports.base import TopicSpec

        specs: list[TopicSpec] = [t.spec(self.topic_partitions) for t in self.topics.values()]
        await self.transport.start()
        await self.transport.create_topics(specs)

    def make_worker(self, transport: Transport | None = None) -> Worker:
        from flowbus.worker import Worker

        self.worker = Worker(self, transport)
        return self.worker

    async def run(self) -> None:
        """Run a worker until :meth:`stop` is called (or SIGTERM/SIGINT when started by :meth:`main`)."""
        worker = self.make_worker()
        await worker.run()

    def stop(self) -> None:
        """Ask the running worker to shut down cleanly."""
        if self.worker is not None:
            self.worker.stop()

    async def close(self) -> None:
        """Flush and close the producer made by :meth:`ensure_producer` (not the worker's)."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.close()

    def main(self, argv: Sequence[str] | None = None) -> None:
        """Run this app's worker as ``flowbus worker`` would, then exit the process.

        It takes the worker's options (all but ``-A``) from ``argv``, by default the command
        line, so ``python shop.py --broker kafka://h:9092 -l debug`` works like
        ``flowbus worker -A shop:app --broker kafka://h:9092 -l debug``: the same one-line
        start errors, signal handling (a second Ctrl-C forces the stop) and exit status.
        """
        from flowbus.cli.worker import app_main

        app_main(self, argv)

    def test_context(self, clock: Any = None, *, settle_timeout_s: float = 30.0) -> TestContext:
        """A test harness: the broker core in-process on a temporary directory (``memory://``), a
        manual clock, no broker to start, no sleeping.

        Example:
            >>> async with app.test_context() as t:          # doctest: +SKIP
            ...     await t.send(clicks, {"user": "u1"})
            ...     assert t.values(enriched) == [...]
        """
        from flowbus.testing import TestContext

        return TestContext(self, clock=clock, settle_timeout_s=settle_timeout_s)
