"""Serializers turn Python objects into bytes and back: ``json``, ``raw`` and ``msgpack``.

A serializer only knows bytes and plain data (dicts, lists, numbers, strings); typed records
are built on top by :class:`Codec`, which validates decoded data against a dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, Protocol

import msgpack

from flowbus.app_errors import ConfigurationError, DecodeError
from flowbus.models import record_decoder


class Serializer(Protocol):
    """Plain data to bytes and back; ``loads`` raises any exception on bad input."""

    name: str

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


_orjson: Any
try:  # optional: orjson parses and writes JSON 2-3x faster; the stdlib is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None
if os.environ.get("FLOWBUS_NO_ORJSON"):  # benchmarks and tests of the fallback
    _orjson = None


def _std_json_codec() -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    """The standard library's C scanner and encoder, called directly.

    ``json.loads``/``json.dumps`` spend more time on argument handling and encoding detection
    than on the JSON itself for small events; calling the C parts directly is about twice as
    fast. Anything unusual (surrounding whitespace, a pure-Python build) takes the full path.
    """
    from json import encoder as json_encoder
    from json import scanner as json_scanner

    scan_once = json_scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
    full_loads = json.loads

    def loads(data: bytes) -> Any:
        text = data.decode() if not isinstance(data, str) else data
        try:
            obj, end = scan_once(text, 0)
        except StopIteration:
            return full_loads(text)  # raises the standard error, or handles leading whitespace
        if end != len(text):
            return full_loads(text)
        return obj

    make = getattr(json_encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        std = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_default).encode
        return loads, lambda obj: std(obj).encode()
    # markers=None skips the circular-reference check: a cycle ends in RecursionError instead.
    encode_string = json_encoder.c_encode_basestring  # type: ignore[attr-defined]
    c_encode = make(None, _default, encode_string, None, ":", ",", False, False, True)
    join = "".join

    def dumps(obj: Any) -> bytes:
        if isinstance(obj, str):
            return encode_string(obj).encode()
        return join(c_encode(obj, 0)).encode()

    return loads, dumps


class JSONSerializer:
    """Compact UTF-8 JSON; dataclasses are written as objects.

    Uses orjson when it is installed, the standard library's C parser and encoder otherwise;
    both write the same compact UTF-8 for the data flowbus handles, and anything orjson refuses
    is written by the standard library.
    """

    name = "json"

    def __init__(self) -> None:
        std_loads, self._std_dumps = _std_json_codec()
        if _orjson is not None:
            self.loads: Callable[[bytes], Any] = _orjson.loads
            self._fast_dumps: Callable[..., bytes] | None = _orjson.dumps
        else:
            self.loads = std_loads
            self._fast_dumps = None

    def dumps(self, obj: Any) -> bytes:
        fast = self._fast_dumps
        if fast is not None:
            try:
                return fast(obj, default=_default)
            except TypeError:
                pass
        return self._std_dumps(obj)


class RawSerializer:
    """Bytes as they are; ``str`` is written as UTF-8. Decoding returns bytes."""

    name = "raw"

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, str):
            return obj.encode()
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        raise TypeError(f"the raw serializer writes bytes or str, not {type(obj).__name__}")

    def loads(self, data: bytes) -> Any:
        return data


class MsgpackSerializer:
    """MessagePack: smaller and faster than JSON, and it keeps bytes as bytes."""

    name = "msgpack"

    def dumps(self, obj: Any) -> bytes:
        return msgpack.packb(obj, default=_default, use_bin_type=True)

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False)


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"{type(obj).__name__} is not serializable")


SERIALIZERS: dict[str, Serializer] = {
    "json": JSONSerializer(),
    "raw": RawSerializer(),
    "msgpack": MsgpackSerializer(),
}


def get_serializer(spec: str | Serializer) -> Serializer:
    """The serializer named ``spec`` (json, raw, msgpack) or ``spec`` itself if it is one."""
    if isinstance(spec, str):
        try:
            return SERIALIZERS[spec]
        except KeyError:
            raise ConfigurationError(f"unknown serializer {spec!r}; known: {sorted(SERIALIZERS)}") from None
    return spec


class Codec:
    """A serializer plus an optional declared type: encodes objects, decodes and validates bytes.

    ``type_`` may be a dataclass (decoded data is checked field by field and built into it),
    ``str`` (raw bytes are decoded as UTF-8), a plain type (``int``, ``dict``...) checked with
    ``isinstance``, or ``None``/``Any`` for no check. Every decode failure is a :class:`DecodeError`
    so the worker can hand the record to the error policy with its original bytes.
    """

    __slots__ = ("decode", "decode_bytes", "encode", "serializer", "type_")

    def __init__(self, serializer: str | Serializer, type_: Any = None) -> None:
        self.serializer = get_serializer(serializer)
        self.type_ = type_
        self.encode: Callable[[Any], bytes | None] = self._make_encoder()
        self.decode: Callable[[bytes | None], Any] = self._make_decoder()
        self.decode_bytes: Callable[[bytes], Any] = self._make_bytes_decoder()
        """:attr:`decode` of bytes (never ``None``) at the lowest cost: the C function itself
        where the codec adds nothing else (UTF-8 text, untyped JSON). It may raise anything on
        bad data; :attr:`decode` of the same bytes then raises the proper :class:`DecodeError`
        (a dataflow decodes every record: a Python frame fewer each time counts)."""

    def _make_encoder(self) -> Callable[[Any], bytes | None]:
        serializer = self.serializer
        dumps = serializer.dumps
        # Outputs encode once per record: the two common codecs skip the serializer's layer.
        if type(serializer) is RawSerializer and self.type_ is str:
            def encode_text(obj: Any) -> bytes | None:
                if obj is None:
                    return None
                return obj.encode() if type(obj) is str else dumps(obj)

            return encode_text
        if type(serializer) is JSONSerializer and serializer._fast_dumps is not None:
            fast, std = serializer._fast_dumps, serializer._std_dumps

            def encode_json(obj: Any) -> bytes | None:  # JSONSerializer.dumps, inlined
                if obj is None:
                    return None
                try:
                    return fast(obj, default=_default)
                except TypeError:
                    return std(obj)

            return encode_json

        def encode(obj: Any) -> bytes | None:
            return None if obj is None else dumps(obj)

        return encode

    def _make_bytes_decoder(self) -> Callable[[bytes], Any]:
        serializer = self.serializer
        if self.type_ is str and serializer.name == "raw":
            return bytes.decode  # strict UTF-8, as decode_text
        if self.type_ in (None, Any) and type(serializer) is JSONSerializer:
            return serializer.loads  # orjson's (or the standard library's) loads, as decode_plain
        return self.decode

    def _make_decoder(self) -> Callable[[bytes | None], Any]:
        loads = self.serializer.loads
        type_ = self.type_
        if type_ is str and self.serializer.name == "raw":
            def decode_text(data: bytes | None) -> Any:
                if data is None:
                    return None
                try:
                    return data.decode()
                except UnicodeDecodeError as exc:
                    raise DecodeError(f"not UTF-8: {exc}") from exc

            return decode_text
        check: Callable[[Any], Any] | None = None
        if type_ is not None and type_ is not Any:
            if dataclasses.is_dataclass(type_):
                check = record_decoder(type_)  # type: ignore[arg-type]
            elif isinstance(type_, type) and type_ is not bytes:
                check = _isinstance_check(type_)

        if check is None:
            def decode_plain(data: bytes | None) -> Any:
                if data is None:
                    return None
                try:
                    return loads(data)
                except Exception as exc:
                    raise DecodeError(f"{self.serializer.name} decode failed: {exc}") from exc

            return decode_plain

        def decode_checked(data: bytes | None) -> Any:
            if data is None:
                return None
            try:
                obj = loads(data)
            except Exception as exc:
                raise DecodeError(f"{self.serializer.name} decode failed: {exc}") from exc
            return check(obj)

        return decode_checked


def _isinstance_check(type_: type) -> Callable[[Any], Any]:
    from flowbus.app_errors import ValidationError

    def check(obj: Any) -> Any:
        if type_ is float and isinstance(obj, int) and not isinstance(obj, bool):
            return float(obj)
        if not isinstance(obj, type_):
            raise ValidationError(f"expected {type_.__name__}, got {type(obj).__name__}")
        return obj

    return check
