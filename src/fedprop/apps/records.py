"""Protocol messages to and from Flower ``RecordDict`` content.

Protocol messages are frozen dataclasses whose fields are ``str``, ``int``,
``float`` or numpy arrays (optionally ``None``). Scalars travel in one
``ConfigRecord`` and arrays in one ``ArrayRecord``, under the field names, so
no message key is spelled anywhere but in the dataclass itself.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedprop.errors import FedpropError

T = TypeVar("T")

__all__ = ["ARRAYS_RECORD", "FIELDS_RECORD", "from_record", "to_record"]

#: Record names inside a message's content.
FIELDS_RECORD = "fedprop.fields"
ARRAYS_RECORD = "fedprop.arrays"


def to_record(message: Any) -> RecordDict:
    """Encode a protocol dataclass as Flower message content."""
    if not dataclasses.is_dataclass(message) or isinstance(message, type):
        raise TypeError(f"not a protocol message: {message!r}")
    fields = ConfigRecord()
    arrays = ArrayRecord()
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            arrays[f.name] = Array.from_numpy_ndarray(np.ascontiguousarray(value))
        elif isinstance(value, str | int | float | bytes | bool):
            fields[f.name] = value
        else:
            raise TypeError(f"field '{f.name}' has unsupported type {type(value).__name__}")
    return RecordDict({FIELDS_RECORD: fields, ARRAYS_RECORD: arrays})


def from_record(kind: type[T], content: RecordDict) -> T:
    """Decode message content into ``kind``; raise :class:`FedpropError` if it does not fit."""
    if FIELDS_RECORD not in content or ARRAYS_RECORD not in content:
        raise FedpropError(f"message is not a fedprop {kind.__name__}")
    fields = typing.cast(ConfigRecord, content[FIELDS_RECORD])
    arrays = typing.cast(ArrayRecord, content[ARRAYS_RECORD])
    hints = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(typing.cast(Any, kind)):
        hint = hints[f.name]
        optional = type(None) in typing.get_args(hint)
        wants_array = hint is np.ndarray or np.ndarray in typing.get_args(hint)
        if wants_array:
            if f.name in arrays:
                values[f.name] = arrays[f.name].numpy()
            elif optional:
                values[f.name] = None
            else:
                raise FedpropError(f"{kind.__name__}: missing array '{f.name}'")
            continue
        if f.name not in fields:
            if optional:
                values[f.name] = None
                continue
            raise FedpropError(f"{kind.__name__}: missing field '{f.name}'")
        value = fields[f.name]
        if hint is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, hint):
            raise FedpropError(f"{kind.__name__}: field '{f.name}' has the wrong type")
        values[f.name] = value
    return kind(**values)
