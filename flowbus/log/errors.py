"""Errors of the partition log.

Each class carries the Kafka error code (``errno``) the broker puts in its response, so the
broker maps an exception to a code with one attribute read instead of a table of its own.
"""

from __future__ import annotations

from flowbus.errors import FlowbusError


class LogError(FlowbusError):
    """Base class of errors raised by :mod:`flowbus.log`.

    ``errno`` is Kafka's error code; -1 (UNKNOWN_SERVER_ERROR) when no closer code exists.
    """

    errno: int = -1


class OffsetOutOfRangeError(LogError):
    """The requested offset is below the log start offset or above the log end offset."""

    errno = 1

    def __init__(self, offset: int, log_start_offset: int, log_end_offset: int) -> None:
        super().__init__(
            f"offset {offset} is outside the log's range [{log_start_offset}, {log_end_offset}]"
        )
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


class CorruptLogError(LogError):
    """Stored data is damaged: the batches that held these offsets cannot be read back.

    The broker answers a fetch at such an offset with CORRUPT_MESSAGE; data before and after the
    damaged range stays readable. ``end_offset`` is None when the range's end is unknown.
    """

    errno = 2  # CORRUPT_MESSAGE

    def __init__(self, message: str, first_offset: int = -1, end_offset: int | None = None) -> None:
        super().__init__(message)
        self.first_offset = first_offset
        self.end_offset = end_offset


class UnknownTopicError(LogError):
    """No such topic, or no such partition of an existing topic (Kafka uses one code for both)."""

    errno = 3


class RecordTooLargeError(LogError):
    """A batch is larger than the topic's ``max.message.bytes``."""

    errno = 10


class InvalidTopicError(LogError):
    """The topic name is illegal (characters, length, ``.``/``..``) or collides with another."""

    errno = 17


class TopicExistsError(LogError):
    """``create_topic`` for a name that already exists."""

    errno = 36


class InvalidPartitionsError(LogError):
    """A partition count below one."""

    errno = 37


class DescriptorBudgetError(LogError):
    """Creating these partitions would need more file descriptors than the broker may use.

    Kafka answers a request its policies refuse with POLICY_VIOLATION; the message says how many
    descriptors the request needs, how many are free, and which limit (``ulimit -n``) to raise.
    """

    errno = 44  # POLICY_VIOLATION


class InvalidConfigError(LogError):
    """An unknown topic config key or a value it does not accept.

    ``key`` names the offending config so the broker can report it back to the client.
    """

    errno = 40

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class StorageError(LogError):
    """The disk failed us (ENOSPC, EIO...): the write was undone where possible. Wraps the OSError."""

    errno = 56  # KAFKA_STORAGE_ERROR


class LogClosedError(LogError):
    """The log (or the segment) was closed, or deleted, while still being used."""

    errno = 56  # KAFKA_STORAGE_ERROR: the closest thing Kafka has to "this log is gone"
