"""flowbus.protocol: the Kafka wire protocol as pure bytes-in, objects-out code (no I/O, no asyncio).

Layers, bottom up:

* :mod:`~flowbus.protocol.primitives` -- bounds-checked Reader / Writer for Kafka's primitive types;
* :mod:`~flowbus.protocol.schema` -- a small field DSL and the engine that compiles a message at one
  version into a flat decode/encode plan;
* :mod:`~flowbus.protocol.messages` -- our definitions of every supported request and response;
* :mod:`~flowbus.protocol.framing` -- splitting a byte stream into size-prefixed frames;
* :mod:`~flowbus.protocol.codec` -- request/response headers and the public encode/decode calls.

The broker's asyncio server only moves bytes: ``FrameDecoder.feed`` -> ``decode_request`` -> handler
-> ``encode_response``.
"""

from __future__ import annotations

from flowbus.protocol.api import FIRST_FLEXIBLE_VERSION, SUPPORTED_VERSIONS, ApiKey
from flowbus.protocol.error_codes import ErrorCode

__all__ = ["FIRST_FLEXIBLE_VERSION", "SUPPORTED_VERSIONS", "ApiKey", "ErrorCode"]
