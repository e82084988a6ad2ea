"""Serializers and codecs: round trips, typed records validated on decode, errors as DecodeError."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from flowbus.app_errors import ConfigurationError, DecodeError, ValidationError
from flowbus.serializers import Codec, get_serializer


@dataclass
class Point:
    x: int
    y: float = 0.0
    tags: list[str] = field(default_factory=list)


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_plain_data_round_trips(name: str) -> None:
    codec = Codec(name)
    value = {"a": 1, "b": [1, 2, "x"], "c": None, "d": 1.5}
    assert codec.decode(codec.encode(value)) == value


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_dataclass_round_trips_and_validates(name: str) -> None:
    codec = Codec(name, Point)
    assert codec.decode(codec.encode(Point(1, 2.5, ["t"]))) == Point(1, 2.5, ["t"])
    with pytest.raises(ValidationError, match="Point.x"):
        codec.decode(Codec(name).encode({"x": "one"}))


def test_int_widens_to_float_and_extra_fields_are_ignored() -> None:
    codec = Codec("json", Point)
    assert codec.decode(b'{"x": 1, "y": 2, "extra": true}') == Point(1, 2.0)


def test_missing_field_and_garbage_are_decode_errors() -> None:
    codec = Codec("json", Point)
    with pytest.raises(ValidationError, match="missing field 'x'"):
        codec.decode(b'{"y": 1}')
    with pytest.raises(DecodeError):
        codec.decode(b"{not json")


def test_raw_keeps_bytes_and_str_type_decodes_utf8() -> None:
    assert Codec("raw").decode(b"\xff\x00") == b"\xff\x00"
    assert Codec("raw").encode("é") == "é".encode()
    assert Codec("raw", str).decode("é".encode()) == "é"
    with pytest.raises(DecodeError):
        Codec("raw", str).decode(b"\xff")


def test_plain_type_is_checked() -> None:
    with pytest.raises(ValidationError):
        Codec("json", int).decode(b'"x"')
    assert Codec("json", float).decode(b"3") == 3.0


def test_none_is_passed_through() -> None:
    assert Codec("json", Point).encode(None) is None
    assert Codec("json", Point).decode(None) is None


def test_unknown_serializer_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        get_serializer("xml")


def test_standard_library_path_matches_plain_json() -> None:
    """The fallback used without orjson: the C scanner/encoder called directly."""
    import json

    from flowbus.serializers import _std_json_codec

    loads, dumps = _std_json_codec()
    for value in [{"a": 1, "b": [1.5, None, "é"], "c": {"d": True}}, [1, 2], "text", 3, None]:
        assert loads(dumps(value)) == value
        assert json.loads(dumps(value)) == value
    assert dumps({"é": 1}) == '{"é":1}'.encode()
    assert loads(b'  {"x": 1}\n') == {"x": 1}
    with pytest.raises(ValueError):
        loads(b'{"x": 1} trailing')
    with pytest.raises(ValueError):
        loads(b"")
