"""Protocol messages to and from Flower ``RecordDict`` content.

Protocol messages are frozen dataclasses whose fields are ``str``, ``int``,
``float`` or numpy arrays (optionally ``None``). Scalars travel in one
``ConfigRecord`` and arrays in one ``ArrayRecord``, under the field names, so
no message key is spelled anywhere but in the dataclass itself. A third
record, :data:`AUDIT_RECORD`, carries the sender's latest signed audit-log
checkpoint.

:func:`message_bytes` is the canonical byte string of a message: what both
ends hash into their audit logs, so the sender's and the receiver's records
of one message can be matched.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import typing
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict

from fedprop.errors import FedpropError
from fedprop.framing import join_frames

T = TypeVar("T")

__all__ = [
    "ARRAYS_RECORD",
    "AUDIT_RECORD",
    "FIELDS_RECORD",
    "attach_checkpoint",
    "attached_checkpoint",
    "error_party",
    "error_reply",
    "from_record",
    "message_bytes",
    "to_record",
]

#: Record names inside a message's content.
FIELDS_RECORD = "fedprop.fields"
ARRAYS_RECORD = "fedprop.arrays"
AUDIT_RECORD = "fedprop.audit"
_CHECKPOINT = "checkpoint"
_CANONICAL = b"fedprop-message-v1"


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


@functools.cache
def _type_hints(kind: type) -> dict[str, Any]:
    """A message class's field types, resolved once per process."""
    return typing.get_type_hints(kind)


def from_record(kind: type[T], content: RecordDict) -> T:
    """Decode message content into ``kind``; raise :class:`FedpropError` if it does not fit."""
    if FIELDS_RECORD not in content or ARRAYS_RECORD not in content:
        raise FedpropError(f"message is not a fedprop {kind.__name__}")
    fields = typing.cast(ConfigRecord, content[FIELDS_RECORD])
    arrays = typing.cast(ArrayRecord, content[ARRAYS_RECORD])
    hints = _type_hints(typing.cast(type, kind))
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


def attach_checkpoint(message: Message, note: str) -> None:
    """Put the sender's signed checkpoint ``note`` into ``message`` (not into errors)."""
    if not message.has_error():
        message.content[AUDIT_RECORD] = ConfigRecord({_CHECKPOINT: note})


def attached_checkpoint(message: Message) -> str | None:
    """The checkpoint the sender attached, if any."""
    if message.has_error() or AUDIT_RECORD not in message.content:
        return None
    record = typing.cast(ConfigRecord, message.content[AUDIT_RECORD])
    note = record.get(_CHECKPOINT)
    if not isinstance(note, str):
        raise FedpropError("the message's audit record carries no checkpoint")
    return note


def _value_bytes(value: object) -> list[bytes]:
    if isinstance(value, bool):
        return [b"bool", b"1" if value else b"0"]
    if isinstance(value, int):
        return [b"int", str(value).encode()]
    if isinstance(value, float):
        return [b"float", struct.pack(">d", value)]
    if isinstance(value, str):
        return [b"str", value.encode("utf-8")]
    if isinstance(value, bytes):
        return [b"bytes", value]
    if isinstance(value, Array):
        shape = ",".join(str(d) for d in value.shape).encode()
        return [b"array", value.dtype.encode(), shape, value.stype.encode(), value.data]
    raise FedpropError(f"message holds a value of unsupported type {type(value).__name__}")


def message_bytes(message: Message) -> bytes:
    """Canonical bytes of a message's content (or of its error): records by name, items by
    key, each value with its type; the same at both ends of a message.

    The attached checkpoint (:data:`AUDIT_RECORD`) is left out: it is signed on its own,
    and leaving it out lets the sender log a message before signing the checkpoint that
    travels with it, so that checkpoint covers the message's own entry."""
    if message.has_error():
        error = message.error
        reason = (error.reason or "").encode()
        return join_frames([_CANONICAL, b"error", str(error.code).encode(), reason])
    frames = [_CANONICAL]
    for name in sorted(set(message.content) - {AUDIT_RECORD}):
        record = message.content[name]
        if not isinstance(record, ConfigRecord | ArrayRecord):
            raise FedpropError(f"message record '{name}' has an unsupported type")
        frames += [name.encode(), type(record).__name__.encode()]
        for key in sorted(record):
            frames += [key.encode(), *_value_bytes(record[key])]
    return join_frames(frames)


def error_reply(request: Message, code: int, party: str, reason: str) -> Message:
    """A node's refusal of ``request``: the reason starts with the party's name."""
    return Message(Error(code=code, reason=f"{party}: {reason}"), reply_to=request)


def error_party(reply: Message) -> str | None:
    """The party an error reply says it comes from (:func:`error_reply`), if any."""
    if not reply.has_error():
        return None
    party, colon, _ = (reply.error.reason or "").partition(": ")
    return party if colon else None
