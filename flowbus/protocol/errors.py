"""Errors of the Kafka wire-protocol codec, and Kafka's own error codes as exception classes.

The codec splits its failures the way h11 does, because the broker reacts differently to each:

* :class:`RemoteProtocolError` -- the *peer* sent bytes that are not a valid frame or message
  (truncated, negative lengths, bad UTF-8, an oversized frame). The broker logs one line and closes
  that one connection; every other connection keeps being served.
* :class:`UnsupportedVersionError` -- the bytes were fine up to the request header, but the API key
  or version is one we do not speak. This is *not* a remote protocol error: the broker answers it
  (UNSUPPORTED_VERSION, or the ApiVersions fallback) and keeps the connection open.
* :class:`LocalProtocolError` -- *we* asked the codec to encode something that cannot be encoded
  (an int out of range, ``None`` for a non-nullable field). That is a bug in the caller.

:class:`KafkaError` and its generated subclasses are different: they are Kafka's numbered error
codes (``NOT_COORDINATOR`` = 16, ...) as exceptions, with ``errno`` and ``retriable``, so that
clients and the broker can raise and catch them by name and map them back to a code for a response.
"""

from __future__ import annotations

from flowbus.errors import FlowbusError
from flowbus.protocol.error_codes import ERROR_INFO, ErrorCode


class ProtocolError(FlowbusError):
    """Base class of every error raised by ``flowbus.protocol``."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that violate the Kafka protocol; close that connection."""


class InvalidFrameError(RemoteProtocolError):
    """The 4-byte size prefix of a frame is negative (or otherwise impossible)."""


class FrameTooLargeError(RemoteProtocolError):
    """The size prefix announces a frame larger than the configured limit.

    Raised as soon as the prefix is read, before any of the frame body is buffered, so a hostile
    peer cannot make us allocate a 2 GiB buffer.
    """

    def __init__(self, size_bytes: int, max_frame_bytes: int) -> None:
        super().__init__(f"frame of {size_bytes} bytes exceeds the limit of {max_frame_bytes} bytes")
        self.size_bytes = size_bytes
        self.max_frame_bytes = max_frame_bytes


class MalformedMessageError(RemoteProtocolError):
    """A frame's contents do not parse: truncated, bad lengths, bad UTF-8, null where not allowed."""


class TruncatedMessageError(MalformedMessageError):
    """A read ran past the end of the frame (or of a length-delimited section inside it)."""


class RequestTooComplexError(MalformedMessageError):
    """A message holds more array elements and tagged fields than its per-API limit allows.

    Decoding stops at the count that crosses the limit, before looping over it, so one frame cannot
    hold the broker's event loop for long (``codec.MAX_REQUEST_ELEMENTS``).
    """


class UnsupportedVersionError(ProtocolError):
    """The request names an API key or version this codec does not support.

    The request header was parsed, so the broker can still answer with UNSUPPORTED_VERSION (35)
    under the right correlation id; ``header`` is the parsed
    :class:`~flowbus.protocol.codec.RequestHeader` (typed loosely here to avoid an import cycle).
    """

    def __init__(self, api_key: int, api_version: int, correlation_id: int, header: object = None) -> None:
        super().__init__(f"unsupported api_key={api_key} api_version={api_version} (correlation_id={correlation_id})")
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id
        self.header = header


class LocalProtocolError(ProtocolError):
    """The caller asked to encode a value the protocol cannot carry (a bug on our side)."""


class KafkaError(FlowbusError):
    """A Kafka protocol error code as an exception.

    Each code in :class:`~flowbus.protocol.error_codes.ErrorCode` has a subclass (``NotCoordinatorError``
    for ``NOT_COORDINATOR``...) with class attributes ``errno`` (the code), ``retriable`` and
    ``description``. Look one up with :func:`kafka_error_for_code`.

    Example::

        raise kafka_error_for_code(16)("coordinator moved")   # NotCoordinatorError
    """

    errno: int = ErrorCode.UNKNOWN_SERVER_ERROR
    retriable: bool = False
    description: str = ERROR_INFO[ErrorCode.UNKNOWN_SERVER_ERROR][1]

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.description)
        self.message = message or self.description

    @property
    def code(self) -> ErrorCode:
        """The error code as an :class:`ErrorCode` member."""
        return ErrorCode(self.errno)


def _class_name(code: ErrorCode) -> str:
    """``NOT_COORDINATOR`` -> ``NotCoordinatorError`` (``..._EXCEPTION`` keeps one ``Error`` suffix)."""
    words = code.name.split("_")
    if words[-1] in ("EXCEPTION", "ERROR"):
        words = words[:-1]
    return "".join(word.capitalize() for word in words) + "Error"


def _build_classes() -> dict[int, type[KafkaError]]:
    """One subclass of :class:`KafkaError` per error code, generated from the error table.

    Generated rather than written out because the table (code, name, retriable, description) is the
    single source of truth; hand-written classes would drift from it.
    """
    classes: dict[int, type[KafkaError]] = {}
    for code in ErrorCode:
        if code == ErrorCode.NONE:
            continue
        retriable, description = ERROR_INFO[code]
        if code == ErrorCode.UNKNOWN_SERVER_ERROR:
            cls: type[KafkaError] = type("UnknownServerError", (KafkaError,), {"__doc__": description})
        else:
            name = _class_name(code)
            if name in globals():
                # UNSUPPORTED_VERSION would shadow the codec's UnsupportedVersionError.
                name = name[: -len("Error")] + "KafkaError"
            cls = type(name, (KafkaError,), {
                "errno": int(code), "retriable": retriable, "description": description, "__doc__": description,
            })
        cls.__module__ = __name__
        classes[int(code)] = cls
    return classes


_ERROR_CLASSES: dict[int, type[KafkaError]] = _build_classes()
globals().update({cls.__name__: cls for cls in _ERROR_CLASSES.values()})

#: Every generated class by name, e.g. ``KAFKA_ERRORS_BY_NAME["NotCoordinatorError"]``.
KAFKA_ERRORS_BY_NAME: dict[str, type[KafkaError]] = {cls.__name__: cls for cls in _ERROR_CLASSES.values()}


def kafka_error_for_code(code: int) -> type[KafkaError]:
    """The exception class for a Kafka error code; unknown codes map to ``UnknownServerError``.

    ``0`` (NONE) is not an error: asking for it is a caller bug and raises ``ValueError``.
    """
    if code == ErrorCode.NONE:
        raise ValueError("error code 0 (NONE) is not an error")
    return _ERROR_CLASSES.get(code, _ERROR_CLASSES[int(ErrorCode.UNKNOWN_SERVER_ERROR)])


def __getattr__(name: str) -> type[KafkaError]:
    """Let static tools see that generated names like ``NotCoordinatorError`` may exist."""
    try:
        return KAFKA_ERRORS_BY_NAME[name]
    except KeyError:
        raise AttributeError(name) from None
