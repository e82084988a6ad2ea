"""Representative bodies for every message at every version, generated from our own definitions.

Two deterministic shapes per (message, version) -- ``rich`` (every field set to a non-default value,
arrays with two elements, tagged fields present) and ``sparse`` (nulls wherever the version allows,
empty arrays, tagged fields at their defaults) -- and a hypothesis strategy for random bodies.
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import strategies as st

from flowbus.protocol.api import SUPPORTED_VERSIONS, ApiKey
from flowbus.protocol.messages import REQUESTS, RESPONSES
from flowbus.protocol.schema import Field, MessageSpec, _zero

_INT_BOUNDS = {"int8": 7, "int16": 15, "uint16": 16, "int32": 31, "uint32": 32, "int64": 63}


def all_pairs() -> list[tuple[str, ApiKey, int, MessageSpec]]:
    """(kind, api key, version, spec) for every request and response version we support."""
    pairs = []
    for key, (low, high) in SUPPORTED_VERSIONS.items():
        for version in range(low, high + 1):
            pairs.append(("request", key, version, REQUESTS[key]))
            pairs.append(("response", key, version, RESPONSES[key]))
    return pairs


def _primitive(kind: str, seed: int) -> Any:
    if kind in _INT_BOUNDS:
        bits = _INT_BOUNDS[kind]
        if kind.startswith("u"):
            return (seed * 7919 + 1) % (1 << bits)
        return ((seed * 7919 + 1) % (1 << bits)) - (1 << (bits - 1)) // 2
    if kind == "bool":
        return True
    if kind == "float64":
        return seed + 0.5
    if kind == "uuid":
        return uuid.UUID(int=seed * 0x1234567 + 1)
    if kind == "string":
        return f"s{seed}-é"
    if kind in ("bytes", "records"):
        return bytes(range(seed % 7, seed % 7 + 9))
    raise AssertionError(kind)


def rich_body(fields: tuple[Field, ...], version: int, seed: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for n, fld in enumerate(fields):
        if version not in fld.versions:
            continue
        s = seed * 31 + n
        if fld.type == "[]":
            body[fld.name] = [rich_body(fld.fields, version, s + i) for i in range(2)]
        elif fld.type == "struct":
            body[fld.name] = rich_body(fld.fields, version, s)
        elif fld.type.startswith("[]"):
            body[fld.name] = [_primitive(fld.type[2:], s + i) for i in range(3)]
        else:
            body[fld.name] = _primitive(fld.type, s)
    return body


def sparse_body(fields: tuple[Field, ...], version: int) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for fld in fields:
        if version not in fld.versions:
            continue
        if version in fld.nullable:
            body[fld.name] = None
        elif fld.type.startswith("[]"):
            body[fld.name] = []
        elif fld.type == "struct":
            body[fld.name] = sparse_body(fld.fields, version) if fld.tag is None else _zero(fld, version)
        else:
            body[fld.name] = _zero(fld, version)
            if fld.tag is not None and body[fld.name] is not None:
                pass
    return body


def _primitive_strategy(kind: str) -> st.SearchStrategy[Any]:
    if kind in _INT_BOUNDS:
        bits = _INT_BOUNDS[kind]
        if kind.startswith("u"):
            return st.integers(0, (1 << bits) - 1)
        return st.integers(-(1 << bits), (1 << bits) - 1)
    if kind == "bool":
        return st.booleans()
    if kind == "float64":
        return st.floats(allow_nan=False)
    if kind == "uuid":
        return st.uuids()
    if kind == "string":
        return st.text(max_size=20)
    return st.binary(max_size=40)


def body_strategy(fields: tuple[Field, ...], version: int, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for fld in fields:
        if version not in fld.versions:
            continue
        if fld.type == "[]":
            inner: st.SearchStrategy[Any] = st.lists(body_strategy(fld.fields, version, depth + 1), max_size=2)
        elif fld.type == "struct":
            inner = body_strategy(fld.fields, version, depth + 1)
        elif fld.type.startswith("[]"):
            inner = st.lists(_primitive_strategy(fld.type[2:]), max_size=3)
        else:
            inner = _primitive_strategy(fld.type)
        if version in fld.nullable:
            inner = st.none() | inner
        parts[fld.name] = inner
    return st.fixed_dictionaries(parts)


def normalise(value: Any) -> Any:
    """memoryview -> bytes and tuple -> list, so decoded bodies compare with generated ones."""
    if isinstance(value, dict):
        return {key: normalise(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(item) for item in value]
    if isinstance(value, (memoryview, bytearray)):
        return bytes(value)
    return value
