"""A small schema language for Kafka messages and the generic engine that encodes and decodes them.

Kafka describes each request and response as a tree of fields, each with the versions it exists in,
the versions in which it may be null, and (for flexible versions, KIP-482) an optional tag that moves
it into the tagged-field section. :mod:`flowbus.protocol.messages` writes those facts down with the
helpers here (:func:`f`, :func:`arr`, :func:`struct`); this module turns one message at one version
into a flat :class:`Plan` -- a decoder and an encoder generated as straight-line Python for exactly
the fields that exist in that version -- so the hot path never looks at version ranges again.

Bodies are plain dicts keyed by snake_case field names; arrays are lists; nested structs are dicts;
``records`` fields decode to zero-copy ``memoryview`` slices of the frame. On encode a missing key
takes the field's default; keys of fields absent from the version are ignored.
"""

from __future__ import annotations

import struct as _struct
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as _dc_field
from functools import cache
from typing import Any

from flowbus.protocol.errors import (
    LocalProtocolError,
    MalformedMessageError,
    TruncatedMessageError,
)
from flowbus.protocol.primitives import ZERO_UUID, Reader, Writer

Body = dict[str, Any]
Decoder = Callable[[Reader], Any]
Encoder = Callable[[Writer, Any], None]

#: Sanity cap on the element count of an array whose elements may encode to zero bytes (a struct
#: whose fields all lie outside the version). Any other array is capped by the bytes left.
MAX_EMPTY_ELEMENT_ARRAY_LENGTH = 10_000

#: The highest version number a range may name; "3+" means 3..OPEN_VERSION.
OPEN_VERSION = 0x7FFF

PRIMITIVE_TYPES = frozenset({
    "int8", "int16", "uint16", "int32", "uint32", "int64", "float64", "bool", "uuid", "string", "bytes", "records",
})

#: Fixed encoded sizes, used to bound array lengths by the bytes left.
_FIXED_SIZE_BYTES = {"int8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "float64": 8,
                     "bool": 1, "uuid": 16}


class VersionRange:
    """An inclusive version range parsed from Kafka's notation: ``"3+"``, ``"0-4"``, ``"7"``, ``"none"``."""

    __slots__ = ("high", "low")

    def __init__(self, spec: str) -> None:
        spec = spec.strip()
        if spec == "none":
            self.low, self.high = 1, 0  # empty
        elif spec.endswith("+"):
            self.low, self.high = int(spec[:-1]), OPEN_VERSION
        elif "-" in spec:
            low, high = spec.split("-")
            self.low, self.high = int(low), int(high)
        else:
            self.low = self.high = int(spec)

    def __contains__(self, version: int) -> bool:
        return self.low <= version <= self.high

    def __repr__(self) -> str:
        if self.low > self.high:
            return "none"
        if self.high == OPEN_VERSION:
            return f"{self.low}+"
        return f"{self.low}-{self.high}"


_MISSING: Any = object()


@dataclass(frozen=True, eq=False)
class Field:
    """One field of a message.

    Attributes:
        name: snake_case name, the dict key.
        type: a primitive name (``int32``, ``string``, ``records``...), ``"[]<primitive>"`` for an array
            of primitives, ``"[]"`` for an array of structs or ``"struct"`` for a single nested struct
            (both with ``fields``).
        versions: versions the field exists in.
        nullable: versions in which it may be null.
        tag / tagged: for a tagged field, its tag number and the versions in which it is tagged.
        default: value used when encoding and the key is missing (the spec's ``default``; None for
            ``"default": "null"``). When not given, the type's empty value (0, "", b"", False, [],
            the zero UUID, a struct of member defaults) -- also for nullable fields, as in Kafka.
        fields: members of a struct or struct array.
    """

    name: str
    type: str
    versions: VersionRange
    nullable: VersionRange
    tag: int | None = None
    tagged: VersionRange = _dc_field(default_factory=lambda: VersionRange("none"))
    default: Any = _MISSING
    fields: tuple[Field, ...] = ()


def f(name: str, type_: str, versions: str = "0+", *, nullable: str = "none", tag: int | None = None,
      tagged: str = "none", default: Any = _MISSING) -> Field:
    """A primitive field or an array of primitives (``type_`` = ``"[]int32"``)."""
    element = type_.removeprefix("[]")
    if element not in PRIMITIVE_TYPES:
        raise ValueError(f"field {name}: unknown type {type_!r}")
    return Field(name, type_, VersionRange(versions), VersionRange(nullable), tag, VersionRange(tagged), default)


def arr(name: str, fields: list[Field], versions: str = "0+", *, nullable: str = "none", tag: int | None = None,
        tagged: str = "none", default: Any = _MISSING) -> Field:
    """An array of structs with the given member fields."""
    return Field(name, "[]", VersionRange(versions), VersionRange(nullable), tag, VersionRange(tagged), default,
                 tuple(fields))


def struct(name: str, fields: list[Field], versions: str = "0+", *, nullable: str = "none",
           tag: int | None = None, tagged: str = "none", default: Any = _MISSING) -> Field:
    """A single nested struct (Kafka writes it inline; nullable structs get an int8 presence marker)."""
    return Field(name, "struct", VersionRange(versions), VersionRange(nullable), tag, VersionRange(tagged), default,
                 tuple(fields))


@dataclass(frozen=True, eq=False)
class MessageSpec:
    """A request, response or standalone schema (e.g. ConsumerProtocolSubscription)."""

    name: str
    valid: VersionRange
    flexible: VersionRange
    fields: tuple[Field, ...]


def message(name: str, valid: str, flexible: str, fields: list[Field]) -> MessageSpec:
    return MessageSpec(name, VersionRange(valid), VersionRange(flexible), tuple(fields))


# -------------------------------------------------------------------------------------------------
# Compilation: (spec, version) -> closures.
# -------------------------------------------------------------------------------------------------

def _zero(field: Field, version: int) -> Any:
    """The value a missing field encodes as, and the value decode reports for an absent tag."""
    if field.default is not _MISSING:
        return field.default
    # As in Kafka's generated message classes, a nullable field without an explicit
    # ``"default": "null"`` defaults to its empty value, not to null. This matters on the wire:
    # librdkafka rejects a null Fetch ``records`` ("invalid MessageSetSize -1"), so a handler that
    # leaves records out must get an empty record set.
    kind = field.type
    if kind.startswith("[]"):
        return ()
    if kind == "struct":
        # A struct's default is its members' defaults, so an absent tagged struct decodes to the
        # same dict that encodes to nothing.
        return {sub.name: _zero(sub, version) for sub in field.fields if version in sub.versions}
    if kind == "string":
        return ""
    if kind in ("bytes", "records"):
        return b""
    if kind == "bool":
        return False
    if kind == "uuid":
        return ZERO_UUID
    if kind == "float64":
        return 0.0
    return 0


def _primitive_codec(kind: str, nullable: bool, flexible: bool) -> tuple[Decoder, Encoder, int]:
    """Reader/Writer methods for one primitive at one (nullable, flexible) combination, plus min size."""
    R, W = Reader, Writer
    if kind in _FIXED_SIZE_BYTES:
        name = "boolean" if kind == "bool" else kind
        return getattr(R, name), getattr(W, name), _FIXED_SIZE_BYTES[kind]
    if kind == "string":
        if flexible:
            return ((R.compact_nullable_string, W.compact_nullable_string, 1) if nullable
                    else (R.compact_string, W.compact_string, 1))
        return (R.nullable_string, W.nullable_string, 2) if nullable else (R.string, W.string, 2)
    if kind == "bytes":
        if flexible:
            return ((R.compact_nullable_bytes, W.compact_nullable_bytes, 1) if nullable
                    else (R.compact_bytes, W.compact_bytes, 1))
        return (R.nullable_bytes, W.nullable_bytes, 4) if nullable else (R.bytes, W.bytes, 4)
    if kind == "records":
        # Same wire form as bytes, but decoded as a zero-copy view of the frame.
        if flexible:
            return ((R.compact_nullable_bytes_view, W.compact_nullable_records, 1) if nullable
                    else (R.compact_bytes_view, W.compact_records, 1))
        return (R.nullable_bytes_view, W.nullable_records, 4) if nullable else (R.bytes_view, W.records, 4)
    raise ValueError(f"unknown primitive {kind!r}")


def _array_codec(element_decode: Decoder, element_encode: Encoder, element_min_bytes: int, nullable: bool,
                 flexible: bool, name: str) -> tuple[Decoder, Encoder, int]:
    """Decoder/encoder for an array whose elements use the given codecs."""
    read_length = Reader.compact_array_length if flexible else Reader.array_length
    write_length = Writer.compact_array_length if flexible else Writer.array_length
    min_bytes = element_min_bytes

    def decode_array(r: Reader) -> list[Any] | None:
        count = read_length(r, nullable, min_bytes)
        if count < 0:
            return None
        if min_bytes == 0 and count > MAX_EMPTY_ELEMENT_ARRAY_LENGTH:
            raise MalformedMessageError(f"{name}: {count} elements exceeds the sanity limit")
        return [element_decode(r) for _ in range(count)]

    def encode_array(w: Writer, value: Any) -> None:
        if value is None:
            if not nullable:
                raise LocalProtocolError(f"{name}: None given for a non-nullable array")
            write_length(w, None)
            return
        write_length(w, len(value))
        for item in value:
            element_encode(w, item)

    return decode_array, encode_array, (1 if flexible else 4)


def _field_codec(field: Field, version: int, flexible: bool, path: str) -> tuple[Decoder, Encoder, int]:
    """Decoder, encoder and minimum encoded size of one field at one version."""
    nullable = version in field.nullable
    kind = field.type
    if kind == "[]":
        dec, enc, size = _struct_codec(field.fields, version, flexible, path)
        return _array_codec(dec, enc, size, nullable, flexible, path)
    if kind == "struct":
        dec, enc, size = _struct_codec(field.fields, version, flexible, path)
        if not nullable:
            return dec, enc, size
        return _nullable_struct(dec, enc, path)
    if kind.startswith("[]"):
        # Elements of a primitive array are never null.
        dec, enc, size = _primitive_codec(kind[2:], False, flexible)
        return _array_codec(dec, enc, size, nullable, flexible, path)
    return _primitive_codec(kind, nullable, flexible)


def _nullable_struct(dec: Decoder, enc: Encoder, path: str) -> tuple[Decoder, Encoder, int]:
    """A nullable struct: int8 -1 for null, 1 then the struct when present."""

    def decode(r: Reader) -> Any:
        marker = r.int8()
        if marker < 0:
            return None
        return dec(r)

    def encode(w: Writer, value: Any) -> None:
        if value is None:
            w.int8(-1)
        else:
            w.int8(1)
            enc(w, value)

    return decode, encode, 1


#: struct format characters of the fixed-width types that can be merged into one unpack/pack.
_FIXED_FORMAT = {"int8": "b", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
                 "float64": "d", "bool": "?"}


def _truncated(r: Reader, stop: int) -> None:
    raise TruncatedMessageError(f"need bytes up to offset {stop}, the message ends at {r.end}")


def _struct_codec(fields: tuple[Field, ...], version: int, flexible: bool, path: str
                  ) -> tuple[Decoder, Encoder, int]:
    """Compile a struct (or a whole message body) at one version into a decoder and an encoder.

    The two functions are generated as Python source and compiled once per (message, version), so
    the hot path is straight-line code: consecutive fixed-width fields (e.g. a Fetch partition's
    index, error code and three offsets) become a single ``struct`` unpack or pack, the body dict
    is built as one literal, and every other field is one call to a precompiled codec.
    """
    plain: list[tuple[Field, Decoder, Encoder, Any]] = []
    tagged: list[tuple[int, str, Decoder, Encoder, Any]] = []
    min_bytes = 1 if flexible else 0  # the tagged-field count
    for fld in fields:
        if version not in fld.versions:
            continue
        dec, enc, size = _field_codec(fld, version, flexible, f"{path}.{fld.name}")
        default = _zero(fld, version)
        if flexible and fld.tag is not None and version in fld.tagged:
            tagged.append((fld.tag, fld.name, dec, enc, default))
        else:
            plain.append((fld, dec, enc, default))
            min_bytes += size
    tagged.sort(key=lambda item: item[0])

    namespace: dict[str, Any] = {"_truncated": _truncated, "_decode_tags": _decode_tags,
                                 "_encode_tags": _encode_tags, "_fresh": _fresh}
    decode_lines = ["def decode(r):"]
    encode_lines = ["def encode(w, body):", "    get = body.get", "    buf = w.buf"]
    entries: list[str] = []  # "'name': var" pieces of the decoded dict literal

    # Group consecutive fixed-width, non-nullable fields into runs.
    groups: list[list[tuple[Field, Decoder, Encoder, Any]]] = []
    for item in plain:
        fld = item[0]
        fixed = fld.type in _FIXED_FORMAT
        if fixed and groups and groups[-1][0][0].type in _FIXED_FORMAT:
            groups[-1].append(item)
        else:
            groups.append([item])

    for index, group in enumerate(groups):
        first = group[0][0]
        if first.type in _FIXED_FORMAT:
            packer = _struct.Struct(">" + "".join(_FIXED_FORMAT[fld.type] for fld, _, _, _ in group))
            namespace[f"S{index}"] = packer
            names = [f"v{index}_{n}" for n in range(len(group))]
            decode_lines += [
                "    p = r.pos",
                f"    q = p + {packer.size}",
                "    if q > r.end:",
                "        _truncated(r, q)",
                "    r.pos = q",
                f"    {', '.join(names)}, = S{index}.unpack_from(r.buf, p)",
            ]
            arguments = []
            for n, (fld, _, _, default) in enumerate(group):
                namespace[f"d{index}_{n}"] = default
                entries.append(f"{fld.name!r}: {names[n]}")
                arguments.append(f"get({fld.name!r}, d{index}_{n})")
            encode_lines.append(f"    buf += S{index}.pack({', '.join(arguments)})")
        else:
            fld, dec, enc, default = group[0]
            namespace[f"D{index}"] = dec
            namespace[f"E{index}"] = enc
            namespace[f"d{index}"] = default
            decode_lines.append(f"    v{index} = D{index}(r)")
            entries.append(f"{fld.name!r}: v{index}")
            encode_lines.append(f"    E{index}(w, get({fld.name!r}, d{index}))")

    for number, (_, name, _, _, default) in enumerate(tagged):
        namespace[f"t{number}"] = default
        fresh = isinstance(default, (tuple, dict))
        entries.append(f"{name!r}: _fresh(t{number})" if fresh else f"{name!r}: t{number}")
    decode_lines.append("    body = {" + ", ".join(entries) + "}")
    if flexible:
        namespace["TAG_DECODERS"] = {tag: (name, dec) for tag, name, dec, _, _ in tagged}
        namespace["TAG_ENCODERS"] = tuple((tag, name, enc, default) for tag, name, _, enc, default in tagged)
        decode_lines += ["    n = r.uvarint()", "    if n:", "        _decode_tags(r, n, body, TAG_DECODERS)"]
        if tagged:
            # Handlers rarely set tagged fields: test key presence inline before the general path.
            present = " or ".join(f"{name!r} in body" for _, name, _, _, _ in tagged)
            encode_lines += [f"    if {present}:", "        _encode_tags(w, body, TAG_ENCODERS)",
                             "    else:", "        buf.append(0)"]
        else:
            encode_lines.append("    buf.append(0)")
    decode_lines.append("    return body")
    if len(encode_lines) == 3:
        encode_lines.append("    pass")

    source = "\n".join(decode_lines) + "\n\n" + "\n".join(encode_lines) + "\n"
    exec(compile(source, f"<flowbus.protocol plan {path} v{version}>", "exec"), namespace)  # noqa: S102
    return namespace["decode"], namespace["encode"], min_bytes


def _fresh(default: Any) -> Any:
    """A decoded copy of a default: ``()`` becomes a new list and dicts are copied, so callers may
    mutate decoded bodies without touching the shared defaults."""
    if isinstance(default, tuple):
        return []
    if isinstance(default, dict):
        return {key: _fresh(value) for key, value in default.items()}
    return default


def _decode_tags(r: Reader, count: int, body: Body, tag_decoders: dict[int, tuple[str, Decoder]]) -> None:
    """Read ``count`` tagged fields into ``body``; unknown tags are skipped (KIP-482)."""
    if count * 2 > r.end - r.pos:
        raise MalformedMessageError(f"{count} tagged fields cannot fit in {r.end - r.pos} bytes")
    r._charge_elements(count, "tagged fields")
    previous = -1
    for _ in range(count):
        tag = r.uvarint()
        if tag <= previous:
            raise MalformedMessageError(f"tagged field {tag} out of order (after {previous})")
        previous = tag
        size = r.uvarint()
        if size > r.end - r.pos:
            raise MalformedMessageError(f"tagged field {tag} of {size} bytes overruns the message")
        start = r.pos
        known = tag_decoders.get(tag)
        if known is not None:
            name, dec = known
            # The sub-reader spends the same element budget as the message around it.
            sub = Reader(r.buf, start, start + size, r.elements_left)
            body[name] = dec(sub)
            r.elements_left = sub.elements_left
            if sub.pos != sub.end:
                raise MalformedMessageError(f"tagged field {tag} has {sub.end - sub.pos} trailing bytes")
        r.pos = start + size


def _encode_tags(w: Writer, body: Body, tag_encoders: tuple[tuple[int, str, Encoder, Any], ...]) -> None:
    """Write the tagged fields whose values differ from their defaults (Kafka omits defaults)."""
    present: list[tuple[int, bytes]] = []
    get = body.get
    for tag, name, enc, default in tag_encoders:
        value = get(name, _MISSING)
        if value is _MISSING or value is None and default is None or _equals_default(value, default):
            continue
        sub = Writer()
        enc(sub, value)
        present.append((tag, sub.getvalue()))
    if present:
        w.tagged_fields(present)  # type: ignore[arg-type]
    else:
        w.buf.append(0)


def _equals_default(value: Any, default: Any) -> bool:
    """Whether a tagged value can be omitted; empty lists equal the () default."""
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return len(value) == 0 and len(default) == 0
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - exotic values are simply written
        return False


@dataclass(frozen=True)
class Plan:
    """One message at one version, compiled: ``decode(reader) -> dict``, ``encode(writer, dict)``."""

    name: str
    version: int
    flexible: bool
    decode: Decoder
    encode: Encoder


def compile_plan(spec: MessageSpec, version: int) -> Plan:
    """Compile ``spec`` at ``version``; raises ``ValueError`` for a version outside the spec."""
    if version not in spec.valid:
        raise ValueError(f"{spec.name} has no version {version} (valid {spec.valid!r})")
    flexible = version in spec.flexible
    dec, enc, _ = _struct_codec(spec.fields, version, flexible, spec.name)
    return Plan(spec.name, version, flexible, dec, _guard_encode(enc, spec.name, version))


def _guard_encode(enc: Encoder, name: str, version: int) -> Encoder:
    """Turn ``struct.error``/``TypeError``/``OverflowError`` from bad values into :class:`LocalProtocolError`.

    The try block costs nothing on the happy path (zero-cost exceptions in CPython 3.11).
    """

    def encode(w: Writer, body: Body) -> None:
        try:
            enc(w, body)
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"{name} v{version}: {exc}") from None
        except (_struct.error, TypeError, OverflowError, AttributeError, ValueError) as exc:
            raise LocalProtocolError(f"{name} v{version}: cannot encode body: {exc}") from exc

    return encode


@cache
def cached_plan(spec: MessageSpec, version: int) -> Plan:
    """:func:`compile_plan`, memoised per (spec, version); specs are immutable."""
    return compile_plan(spec, version)


def field_names(spec: MessageSpec, version: int) -> list[str]:
    """Top-level field names of ``spec`` at ``version`` (for tests and docs)."""
    return [fld.name for fld in spec.fields if version in fld.versions]


__all__ = [
    "Body", "Field", "MessageSpec", "Plan", "VersionRange", "arr", "cached_plan", "compile_plan", "f",
    "field_names", "message", "struct",
]
