"""Agents: ``async def`` functions over a stream, run by the worker with N instances each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from flowbus.context import current_source
from flowbus.stream import DEFAULT_MAX_BUFFERED_EVENTS, Stream
from flowbus.transports.base import Record, RecordMetadata

if TYPE_CHECKING:
    from flowbus.app import App
    from flowbus.topic import Topic

AgentFun = Callable[[Stream], Awaitable[None] | AsyncIterator[Any]]
Sink = Union["Topic", "Agent", Callable[[Any], Any]]


class Agent:
    """A declared agent; made by ``@app.agent(topic, ...)``.

    The worker runs ``concurrency`` instances; partition ``p`` of the topic always goes to
    instance ``p % concurrency``, so events of one partition stay in order. A value the agent
    ``yield``s is sent to every sink: a :class:`~flowbus.topic.Topic`, another :class:`Agent`
    (to its topic), or a callable (sync or async, given the value only).

    Keys: a value yielded while the agent is in an event (between two steps of ``async for``
    over the stream, ``items()`` or ``events()``) goes to topic sinks with that event's key, as
    a dataflow's ``.to(topic)`` keeps the current key; so a keyed record keeps its partitioning
    downstream. A value yielded outside any single event (after a ``take`` list, which may mix
    keys) has no key. To choose the key, send instead of yielding:
    ``await topic.send(value, key=...)``.
    """

    def __init__(
        self,
        app: App,
        fn: AgentFun,
        topic: Topic,
        *,
        name: str,
        concurrency: int = 1,
        sinks: Sequence[Sink] = (),
        max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.app = app
        self.fn = fn
        self.topic = topic
        self.name = name
        self.concurrency = concurrency
        self.sinks = list(sinks)
        self.max_buffered_events = max_buffered_events

    def __repr__(self) -> str:
        return f"<Agent {self.name} on {self.topic.name!r} x{self.concurrency}>"

    def __call__(self, stream: Stream) -> Awaitable[None] | AsyncIterator[Any]:
        """Call the decorated function directly (handy in unit tests of the function itself)."""
        return self.fn(stream)

    async def send(
        self,
        value: Any = None,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | None = None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Send a value to this agent's topic (so it reaches whichever worker owns the partition)."""
        return await self.topic.send(value, key=key, partition=partition, headers=headers, timestamp_ms=timestamp_ms)

    async def emit(self, value: Any) -> None:
        """Hand one yielded value to every sink; topics get the current event's key (see the class)."""
        from flowbus.topic import Topic

        source = current_source.get()
        raw_key = source.key if type(source) is Record else None
        for sink in self.sinks:
            topic = sink if isinstance(sink, Topic) else sink.topic if isinstance(sink, Agent) else None
            if topic is None:
                result = sink(value)  # type: ignore[operator]
                if asyncio.iscoroutine(result):
                    await result
            elif raw_key is None:
                topic.send_soon(value)
            else:
                self._send_keyed(topic, value, raw_key)

    def _send_keyed(self, topic: Topic, value: Any, raw_key: bytes) -> None:
        """Send with the input record's key: its bytes as they are when both topics encode keys
        with the same serializer, else decoded with this agent's key codec and encoded with the
        sink's (a key that does not decode is a DecodeError, handled by the error policy)."""
        source_codec, sink_codec = self.topic.key_codec, topic.key_codec
        key: bytes | None = raw_key
        if source_codec.serializer.name != sink_codec.serializer.name:
            key = sink_codec.encode(source_codec.decode(raw_key))
        self.app.producer.send_soon(topic.name, topic.value_codec.encode(value), key)
