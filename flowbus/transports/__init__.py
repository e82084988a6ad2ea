"""Transports: how the framework reaches a Kafka-like system.

:func:`transport_from_url` picks one by URL scheme:

* ``memory://[NAME]`` — the broker core in-process on a temporary directory, for the test harness
  (:mod:`flowbus.transports.memory`);
* ``kafka://host:port[,host:port]`` — any Kafka-protocol cluster through confluent-kafka;
* ``embedded://DIR`` — the flowbus broker core running inside the worker, data in ``DIR``.
"""

from __future__ import annotations

from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.transports.base import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    GroupDescription,
    GroupMember,
    GroupSummary,
    Producer,
    Record,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
    TopicSpec,
    Transport,
    Watermarks,
)
from flowbus.transports.errors import TransportError, UnknownTransportError

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "Consumer",
    "GroupDescription",
    "GroupMember",
    "GroupSummary",
    "Producer",
    "Record",
    "RecordMetadata",
    "TopicDescription",
    "TopicPartition",
    "TopicSpec",
    "Transport",
    "TransportError",
    "Watermarks",
    "transport_from_url",
]


def transport_from_url(url: str, *, clock: Clock = SYSTEM_CLOCK) -> Transport:
    """The transport for ``url``; imports a backend only when its scheme is used.

    Raises:
        UnknownTransportError: the scheme is not one of memory, kafka or embedded, or the
            embedded broker core is not available in this installation.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise UnknownTransportError(f"broker URL {url!r} has no scheme; use memory://, kafka:// or embedded://")
    if scheme == "memory":
        from flowbus.transports.memory import MemoryTransport

        return MemoryTransport(url, clock=clock)
    if scheme in ("kafka", "kafkas"):  # kafkas: over TLS (docs/security.md)
        from flowbus.transports.kafka import KafkaTransport

        return KafkaTransport(url, clock=clock)
    if scheme == "embedded":
        try:
            from flowbus.transports.embedded import EmbeddedTransport
        except ImportError as exc:
            raise UnknownTransportError(
                f"embedded:// needs the in-process broker core (flowbus.broker.BrokerCore), "
                f"which this build does not have yet: {exc}"
            ) from exc
        return EmbeddedTransport(url, clock=clock)
    raise UnknownTransportError(f"no transport for scheme {scheme!r} in {url!r}")
