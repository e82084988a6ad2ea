"""Errors of the state layer (stores, tables, changelogs, restore)."""

from __future__ import annotations

from flowbus.errors import FlowbusError


class StateError(FlowbusError):
    """Base class of errors raised by state stores and tables."""


class StoreOpenError(StateError):
    """A partition's database could not be opened (corrupt files, a foreign format version)."""


class StoreLockedError(StateError):
    """Another process holds the partition's database; raised after the bounded retry gave up."""


class StoreClosedError(StateError):
    """The partition's database was closed (its partition was revoked, or the worker stopped)."""


class PartitionNotOwnedError(StateError):
    """A table key belongs to a partition this worker does not own (or not to the event's own
    partition): writing it here would never reach the right changelog partition."""


class ChangelogMismatchError(StateError):
    """An existing changelog topic does not match its table (another partition count)."""


class RestoreTimeoutError(StateError):
    """A partition's restore made no progress for longer than its timeout."""


class ReadOnlyTableError(StateError):
    """A global table was written outside its changelog."""
