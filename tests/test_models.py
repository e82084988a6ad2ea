"""Typed record validation: nested dataclasses, optionals, unions, literals, containers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from flowbus.app_errors import ValidationError
from flowbus.models import record_decoder


@dataclass
class Address:
    city: str


@dataclass
class User:
    name: str
    age: int | None
    kind: Literal["free", "paid"]
    address: Address
    scores: dict[str, float]
    history: tuple[int, ...] = ()


def test_nested_record_is_built() -> None:
    user = record_decoder(User)(
        {"name": "a", "age": None, "kind": "paid", "address": {"city": "x"}, "scores": {"q": 1}, "history": [1, 2]}
    )
    assert user == User("a", None, "paid", Address("x"), {"q": 1.0}, (1, 2))


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"name": "a", "age": "3", "kind": "paid", "address": {"city": "x"}, "scores": {}}, "User.age"),
        ({"name": "a", "age": 3, "kind": "gold", "address": {"city": "x"}, "scores": {}}, "User.kind"),
        ({"name": "a", "age": 3, "kind": "free", "address": {"city": 1}, "scores": {}}, "User.address.city"),
        ({"name": "a", "age": 3, "kind": "free", "address": {"city": "x"}, "scores": {"q": "no"}}, "User.scores"),
        ({"name": "a", "age": True, "kind": "free", "address": {"city": "x"}, "scores": {}}, "User.age"),
        ([1, 2], "User"),
    ],
)
def test_invalid_data_names_the_field(data: object, where: str) -> None:
    with pytest.raises(ValidationError, match=where.replace(".", r"\.")):
        record_decoder(User)(data)
