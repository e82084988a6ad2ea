"""Keys from URLs (flowbus/web/tables.py): converted to the table's key type, or a clear error."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from flowbus.serializers import Codec
from flowbus.web.tables import KeyConversionError, convert_key


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


def convert(text: str, key_type: Any, serializer: str | None = None) -> Any:
    codec = Codec(serializer or ("raw" if key_type in (str, bytes) else "json"), key_type)
    return convert_key(text, key_type, codec.serializer.name, codec.decode)


@pytest.mark.parametrize(("text", "key_type", "expected"), [
    ("alice", str, "alice"),
    ("42", str, "42"),
    ("alice", bytes, b"alice"),
    ("42", int, 42),
    ("-7", int, -7),
    ("2.5", float, 2.5),
    ("true", bool, True),
    ("False", bool, False),
    ('{"x": 1, "y": 2}', Point, Point(1, 2)),
    ("42", None, 42),  # no key type: JSON when it parses...
    ('"42"', None, "42"),
    ("alice", None, "alice"),  # ...else a string
])
def test_keys_convert_to_the_key_type(text: str, key_type: Any, expected: Any) -> None:
    assert convert(text, key_type) == expected


@pytest.mark.parametrize(("text", "key_type", "message"), [
    ("abc", int, "'abc' is not an int"),
    ("1.5", int, "'1.5' is not an int"),
    ("x", float, "'x' is not a float"),
    ("yes", bool, "'yes' is not a bool"),
    ('{"x": 1}', Point, "is not a Point"),
    ("nope", Point, "is not a Point"),
])
def test_a_key_of_the_wrong_type_is_refused(text: str, key_type: Any, message: str) -> None:
    with pytest.raises(KeyConversionError, match=message):
        convert(text, key_type)


def test_a_raw_key_without_type_is_its_bytes() -> None:
    assert convert("alice", None, "raw") == b"alice"
