"""Errors of the transport layer: what the framework may see go wrong in a Kafka-like system."""

from __future__ import annotations

from flowbus.errors import FlowbusError


class TransportError(FlowbusError):
    """Base class of errors raised by a transport."""


class UnknownTransportError(TransportError):
    """The broker URL names a scheme no transport handles (or one whose backend is missing)."""


class TopicNotFoundError(TransportError):
    """The topic does not exist and the transport was not allowed to create it."""


class ProduceError(TransportError):
    """A record could not be delivered; set on the delivery future of that record."""


class CommitError(TransportError):
    """Offsets could not be committed (for example the group rebalanced meanwhile)."""


class TransactionError(TransportError):
    """A transaction could not begin, commit or abort; the producer may have been fenced."""


class ProducerFencedError(TransactionError):
    """Another producer with the same transactional id took over; this one must stop."""


class GroupFencedError(TransactionError):
    """The consumer group moved on without this member (KIP-447): the offsets sent to the
    transaction named a member the group no longer has, an older generation, or a static
    instance a newer member took over (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION,
    FENCED_INSTANCE_ID). Nothing was committed. The producer stays usable: abort the
    transaction, forget every partition's uncommitted progress, and join the group again."""


class BrokerUnavailableError(TransportError):
    """The broker could not be reached, or did not answer, within the time given."""
