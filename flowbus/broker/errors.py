"""Errors of the broker.

Most broker failures never become Python exceptions: a Kafka request that fails is answered
with an error code (``flowbus.protocol.ErrorCode``) in its response, per partition or per
group, and the connection stays open. The classes here are for the few failures that end a
broker operation as a whole.
"""

from __future__ import annotations

from flowbus.errors import FlowbusError


class BrokerError(FlowbusError):
    """Base class of errors raised by the broker."""


class BrokerConfigError(BrokerError):
    """A broker setting is invalid (a bad listen address, an impossible limit)."""


class InternalTopicError(BrokerError):
    """A record in an internal topic (``__consumer_offsets``) cannot be decoded.

    Raised while loading committed offsets; the loader logs it and skips the record rather
    than refusing to start, because one bad record must not take every group down.
    """


class ProducerIdExhaustedError(BrokerError):
    """The persisted producer id counter would pass INT64 max."""


class CloseConnection(BrokerError):
    """Raised by a handler to close its connection after the responses before it are written.

    Kafka does this for a failed Produce with acks=0: the client reads no response, so closing
    the connection is the only way to make it refresh metadata and notice the error.
    """


class CloseAfterResponse(CloseConnection):
    """Raised by a handler to answer ``body`` and then close the connection.

    SASL does this (Kafka's authenticator too): a failed authentication or a request out of
    order is answered with its error code, so the client can report it, and the connection is
    closed right after, so it gets no second try.
    """

    def __init__(self, reason: str, body: dict[str, object]) -> None:
        super().__init__(reason)
        self.body = body
