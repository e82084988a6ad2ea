"""Typed records: plain dataclasses, checked field by field when decoded.

flowbus has no record base class to inherit: any ``@dataclass`` is a record type. Decoding
builds the dataclass from the serializer's plain data and checks each field against its type
hint, so a malformed event fails at the edge of the app (and goes to the error policy) instead
of deep inside an agent. Unknown extra fields are ignored so producers can add fields first.

Supported hints: ``int``, ``float`` (ints are widened), ``str``, ``bool``, ``bytes``, ``Any``,
``X | None`` and other unions, ``list[X]``, ``tuple[X, ...]``, ``dict[K, V]``, ``Literal[...]``
and nested dataclasses.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Click:
    ...     user: str
    ...     ms: int
    >>> record_decoder(Click)({"user": "u1", "ms": 3})
    Click(user='u1', ms=3)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from flowbus.app_errors import ValidationError

Check = Callable[[Any, str], Any]

_DECODERS: dict[type, Callable[[Any], Any]] = {}


def record_decoder(cls: type) -> Callable[[Any], Any]:
    """A function turning plain data (a dict) into a validated ``cls`` instance; cached per class."""
    decoder = _DECODERS.get(cls)
    if decoder is None:
        check = _dataclass_check(cls)
        decoder = _DECODERS[cls] = lambda obj: check(obj, cls.__name__)
    return decoder


def _dataclass_check(cls: type) -> Check:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    plan: list[tuple[str, Check, bool]] = []
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        plan.append((f.name, _check_for(hints.get(f.name, Any)), required))

    def check(obj: Any, path: str) -> Any:
        if isinstance(obj, cls):
            return obj
        if not isinstance(obj, dict):
            raise ValidationError(f"{path}: expected an object for {cls.__name__}, got {type(obj).__name__}")
        kwargs: dict[str, Any] = {}
        for name, field_check, required in plan:
            if name in obj:
                kwargs[name] = field_check(obj[name], f"{path}.{name}")
            elif required:
                raise ValidationError(f"{path}: missing field {name!r}")
        return cls(**kwargs)

    return check


def _check_for(hint: Any) -> Check:
    if hint is Any or hint is object:
        return lambda v, p: v
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        inner: list[Check] = []

        def nested(v: Any, p: str) -> Any:
            if not inner:
                inner.append(_dataclass_check(hint))
            return inner[0](v, p)

        return nested
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        checks = [_check_for(a) for a in args]
        allows_none = type(None) in args

        def union(v: Any, p: str) -> Any:
            if v is None and allows_none:
                return None
            for c in checks:
                try:
                    return c(v, p)
                except ValidationError:
                    continue
            raise ValidationError(f"{p}: {v!r} matches none of {hint}")

        return union
    if origin is typing.Literal:
        allowed = set(args)

        def literal(v: Any, p: str) -> Any:
            if v not in allowed:
                raise ValidationError(f"{p}: {v!r} is not one of {sorted(map(repr, allowed))}")
            return v

        return literal
    if origin in (list, set, frozenset) or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        item = _check_for(args[0]) if args else _check_for(Any)
        build = origin

        def sequence(v: Any, p: str) -> Any:
            if not isinstance(v, (list, tuple)):
                raise ValidationError(f"{p}: expected a list, got {type(v).__name__}")
            return build(item(x, f"{p}[{i}]") for i, x in enumerate(v))

        return sequence
    if origin is dict:
        key_check = _check_for(args[0]) if args else _check_for(Any)
        value_check = _check_for(args[1]) if args else _check_for(Any)

        def mapping(v: Any, p: str) -> Any:
            if not isinstance(v, dict):
                raise ValidationError(f"{p}: expected an object, got {type(v).__name__}")
            return {key_check(k, p): value_check(x, f"{p}[{k!r}]") for k, x in v.items()}

        return mapping
    if hint is float:

        def number(v: Any, p: str) -> Any:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValidationError(f"{p}: expected a number, got {type(v).__name__}")
            return float(v)

        return number
    if hint is int:

        def integer(v: Any, p: str) -> Any:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValidationError(f"{p}: expected an integer, got {type(v).__name__}")
            return v

        return integer
    if isinstance(hint, type):

        def instance(v: Any, p: str) -> Any:
            if not isinstance(v, hint):
                raise ValidationError(f"{p}: expected {hint.__name__}, got {type(v).__name__}")
            return v

        return instance
    return lambda v, p: v
