"""Agents: ``async def`` functions over a stream, run by the worker with N instances each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from flowbus.stream import DEFAULT_MAX_BUFFERED_EVENTS, Stream
from flowbus.transports.base import RecordMetadata

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
    (to its topic), or a callable (sync or async).
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
        """Hand one yielded value to every sink."""
        from flowbus.topic import Topic

        for sink in self.sinks:
            if isinstance(sink, Topic):
                sink.send_soon(value)
            elif isinstance(sink, Agent):
                sink.topic.send_soon(value)
            else:
                result = sink(value)
                if asyncio.iscoroutine(result):
                    await result
