"""Length-prefixed framing of byte strings, for protocol objects that travel as bytes."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from fedprop.errors import FedpropError

__all__ = ["FramingError", "join_frames", "split_frames"]

_LENGTH = struct.Struct(">I")


class FramingError(FedpropError):
    """Bytes that do not split into the expected frames."""


def join_frames(frames: Sequence[bytes]) -> bytes:
    """Each frame preceded by its 4-byte big-endian length."""
    return b"".join(_LENGTH.pack(len(f)) + f for f in frames)


def split_frames(data: bytes, what: str) -> list[bytes]:
    """The frames of ``data``; raise :class:`FramingError` naming ``what`` if malformed."""
    frames: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise FramingError(f"{what}: truncated")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise FramingError(f"{what}: truncated")
        frames.append(data[offset : offset + length])
        offset += length
    return frames
