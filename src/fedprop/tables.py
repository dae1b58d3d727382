"""Reading the tables of a TOML spec, each problem a :class:`SpecError` naming the key.

Job specs (:mod:`fedprop.spec`) and vertical job specs
(:mod:`fedprop.protocols.vertical`) read their tables with these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from fedprop.errors import SpecError

__all__ = ["check_keys", "get", "table"]

T = TypeVar("T")


def table(doc: Mapping[str, Any], name: str, required: bool = True) -> Mapping[str, Any]:
    """The table ``[name]`` of ``doc`` (empty if absent and not ``required``)."""
    value = doc.get(name)
    if value is None:
        if required:
            raise SpecError(f"missing table [{name}]")
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"[{name}] must be a table")
    return value


def check_keys(table: Mapping[str, Any], name: str, allowed: Iterable[str]) -> None:
    """Refuse keys of ``[name]`` outside ``allowed``."""
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise SpecError(f"[{name}]: unknown key(s) {', '.join(unknown)}")


def get(table: Mapping[str, Any], name: str, key: str, kind: type[T], default: T | None) -> T:
    """``key`` of ``[name]`` as a ``kind`` (an integer passes for a float; a boolean never
    for an integer), or ``default``; missing without a default is an error."""
    value = table.get(key, default)
    if value is None:
        raise SpecError(f"[{name}]: missing key '{key}'")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SpecError(f"[{name}] {key}: expected {kind.__name__}, got {value!r}")
    return value
