"""Errors of the framework layer (app, topics, agents, streams, worker)."""

from __future__ import annotations

from flowbus.errors import FlowbusError


class FrameworkError(FlowbusError):
    """Base class of errors raised by the stream-processing framework."""


class ConfigurationError(FrameworkError):
    """The app, a topic or an agent was declared with settings that cannot work together."""


class DecodeError(FrameworkError):
    """A record's key or value could not be deserialized into the topic's declared type."""


class ValidationError(DecodeError):
    """The bytes parsed, but the data does not match the declared record type."""


class AgentError(FrameworkError):
    """An agent or stream step raised and the app's error policy is ``stop``.

    The worker stops cleanly (offsets of events already processed are committed, the failing
    event's is not) and ``App.run`` raises this error with the original one as ``__cause__``.
    """
