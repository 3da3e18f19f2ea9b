"""Domain objects to and from bus payloads (plain JSON objects).

One generic mapping for every frozen dataclass the services exchange, so a new field needs no
codec change. Decoding validates types and raises ``MalformedMessage`` naming the field, so a
bad payload is dead-lettered with the reason instead of crashing a consumer.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any, TypeVar

from quantum_trader.bus.protocol import MalformedMessage

T = TypeVar("T")


def to_payload(obj: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"not a dataclass instance: {obj!r}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        out[f.name] = _plain(getattr(obj, f.name))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_payload(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def from_payload(cls: type[T], payload: dict[str, Any]) -> T:
    """Rebuild ``cls`` from ``payload``; raise ``MalformedMessage`` on any mismatch."""
    if not isinstance(payload, dict):
        raise MalformedMessage(f"{cls.__name__}: payload is not an object")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in payload:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MalformedMessage(f"{cls.__name__}: missing field {f.name!r}")
            continue
        kwargs[f.name] = _coerce(hints[f.name], payload[f.name], f"{cls.__name__}.{f.name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except MalformedMessage as exc:
                errors.append(str(exc))
        raise MalformedMessage(errors[0] if errors else f"{where}: bad value {value!r}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise MalformedMessage(f"{where}: {value!r} is not a {tp.__name__}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MalformedMessage(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MalformedMessage(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise MalformedMessage(f"{where}: expected a string, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise MalformedMessage(f"{where}: expected true/false, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise MalformedMessage(f"{where}: expected a list")
        return tuple(_coerce(args[0], v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise MalformedMessage(f"{where}: expected an object")
        return value
    if dataclasses.is_dataclass(tp):
        return from_payload(tp, value)  # type: ignore[arg-type]
    return value
