"""The packing codec: many fixed-point values in one Paillier plaintext (no encryption here).

Encoding. A value ``x`` is clipped to ``[-clip, clip]``, scaled by ``2**frac_bits`` and
rounded to the nearest integer (ties to even), then offset by
``K = ceil(clip * 2**frac_bits)`` so that it is non-negative: each encoded value lies in
``[0, 2K]``. Values sit side by side in slots of :attr:`PackingSpec.slot_bits` bits, value
``i`` in slot ``i % slots_per_plaintext`` (least significant first) of plaintext
``i // slots_per_plaintext``; unused slots of the last plaintext are zero.

Summing. Adding the plaintexts of ``k`` vectors (what a homomorphic sum of their
ciphertexts does) adds slot by slot. A slot is wide enough for ``max_summands * 2K``
plus :data:`~fedprop.crypto.params.SLOT_GUARD_BITS`, so a sum of up to ``max_summands``
vectors can never carry into the next slot, and the whole plaintext stays below
``2**(key_bits-1) <= n``, so nothing wraps modulo ``n`` either. :func:`unpack_sum`
subtracts ``k * K`` from each slot and scales back; a slot holding more than ``k * 2K``
(a wrong ``summands`` count, a contribution not made by this codec) is refused, not
decoded into a wrong number.

Error. Each encoded value is within ``2**-(frac_bits+1)`` of the clipped value, so a
decoded sum of ``k`` vectors is within ``k * 2**-(frac_bits+1)`` of the exact sum of the
clipped values; :attr:`PackingSpec.error_bound` states it for ``k = max_summands``. The
result is returned as float64, which adds at most half a unit in the last place of the
result (relative ``2**-53``; it matters only for sums above ``2**(52 - frac_bits)``).

Clipping. Values beyond ``clip`` are clipped silently by :func:`pack`; a caller that must
not lose information checks first, or reports :func:`clipped_fraction` (for model updates
clipping is a deliberate bound on each party's influence).

Choosing ``clip`` and ``frac_bits``. A slot needs about
``log2(max_summands) + log2(clip) + frac_bits + 2 + SLOT_GUARD_BITS`` bits, and a
``b``-bit key holds ``(b - 1) // slot_bits`` slots. Precision costs one bit per halving
of the error, range one bit per doubling of ``clip``. With a 2048-bit key and 4 parties:

==========  =========  =========  =====  ======================
clip        frac_bits  slot bits  slots  error of a summed value
==========  =========  =========  =====  ======================
2**4 = 16   24         33         62     4 * 2**-25 = 1.2e-7
2**20       24         49         41     1.2e-7
2**40       20         65         31     4 * 2**-21 = 1.9e-6
==========  =========  =========  =====  ======================

For a model update sent as ``[n*w, n]`` (``n`` examples, weights ``|w| <= 10``), either
send ``n*w`` with ``clip`` at least ``n_max * 10`` (``2**20`` covers ``n_max = 100,000``),
or pre-scale by a public constant (e.g. divide by an agreed ``n_max``) and use a small
clip; either way the error of the weighted sum is ``parties * 2**-(frac_bits+1)``.

Who learns what: nothing here is secret; the codec only has to be exact and never
overflow, so that encryption changes speed, never results beyond the stated error.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsIndex

import numpy as np
import numpy.typing as npt

from fedprop.crypto.params import DEFAULT_FRAC_BITS, MIN_PAILLIER_BITS, SLOT_GUARD_BITS
from fedprop.errors import FedpropError

__all__ = [
    "PackingError",
    "PackingSpec",
    "clipped_fraction",
    "pack",
    "unpack_sum",
]

_INT64_LIMIT = 2**62  # keep int64 arithmetic well clear of overflow


class PackingError(FedpropError):
    """Values that cannot be packed, or packed sums that do not decode."""


def _check_int(value: object, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise PackingError(f"{what} must be an integer, not {type(value).__name__}")
    number = operator.index(value)
    if number < low:
        raise PackingError(f"{what} must be at least {low}, got {number}")
    return number


@dataclass(frozen=True)
class PackingSpec:
    """How values are encoded and laid out in plaintexts of a ``key_bits``-bit key.

    Construction validates everything (:class:`PackingError`): the key size is at least
    :data:`~fedprop.crypto.params.MIN_PAILLIER_BITS`, ``frac_bits >= 0``, ``clip`` is a
    positive finite number, ``max_summands >= 1``, and at least one slot fits in a
    plaintext. Every party of a job must use the same spec.
    """

    key_bits: int
    frac_bits: int
    clip: float
    max_summands: int

    def __post_init__(self) -> None:
        key_bits = _check_int(self.key_bits, "key_bits", 1)
        if key_bits < MIN_PAILLIER_BITS:
            raise PackingError(
                f"a {key_bits}-bit key is too small: at least {MIN_PAILLIER_BITS} bits required"
            )
        _check_int(self.frac_bits, "frac_bits", 0)
        _check_int(self.max_summands, "max_summands", 1)
        if isinstance(self.clip, bool) or not isinstance(self.clip, int | float):
            raise PackingError(f"clip must be a number, not {type(self.clip).__name__}")
        object.__setattr__(self, "clip", float(self.clip))
        if not math.isfinite(self.clip) or self.clip <= 0:
            raise PackingError(f"clip must be positive and finite, got {self.clip}")
        try:
            scaled_clip = math.ldexp(self.clip, self.frac_bits)
        except OverflowError:
            scaled_clip = math.inf
        if not math.isfinite(scaled_clip):
            raise PackingError(f"clip * 2**frac_bits overflows ({self.clip} * 2**{self.frac_bits})")
        if self.slot_bits > self.key_bits - 1:
            raise PackingError(
                f"a slot needs {self.slot_bits} bits but a {self.key_bits}-bit plaintext holds "
                f"{self.key_bits - 1}: lower clip, frac_bits or the number of summands"
            )

    @classmethod
    def for_job(
        cls, key_bits: int, parties: int, clip: float, frac_bits: int = DEFAULT_FRAC_BITS
    ) -> PackingSpec:
        """The spec for sums of one vector per party (``max_summands = parties``)."""
        return cls(key_bits=key_bits, frac_bits=frac_bits, clip=clip, max_summands=parties)

    @property
    def offset(self) -> int:
        """``K = ceil(clip * 2**frac_bits)``, added to every encoded value."""
        return math.ceil(math.ldexp(self.clip, self.frac_bits))

    @property
    def slot_bits(self) -> int:
        """Width of one slot: holds ``max_summands * 2K`` exactly, plus the guard bits."""
        return (self.max_summands * 2 * self.offset).bit_length() + SLOT_GUARD_BITS

    @property
    def slots_per_plaintext(self) -> int:
        """Values per plaintext; a packed plaintext stays below ``2**(key_bits-1) <= n``."""
        return (self.key_bits - 1) // self.slot_bits

    @property
    def error_bound(self) -> float:
        """Largest absolute error of one decoded sum element of ``max_summands`` vectors,
        against the exact sum of the clipped values: ``max_summands * 2**-(frac_bits+1)``
        (plus float64 rounding of the result, see the module docs)."""
        return self.max_summands * math.ldexp(1.0, -(self.frac_bits + 1))

    def ciphertexts_for(self, length: int) -> int:
        """Plaintexts (so ciphertexts) needed for a vector of ``length`` values."""
        length = _check_int(length, "length", 0)
        return -(-length // self.slots_per_plaintext)


def _vector(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PackingError(f"values are not numbers: {exc}") from None
    if array.ndim != 1:
        raise PackingError(f"expected a 1-D vector, got an array of shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise PackingError(
            f"{int(bad.sum())} value(s) are NaN or infinite (first at index {first}, "
            f"{array[first]})"
        )
    return array


def clipped_fraction(spec: PackingSpec, values: npt.ArrayLike) -> float:
    """Fraction of ``values`` whose magnitude exceeds ``spec.clip`` (what :func:`pack` clips)."""
    array = _vector(values)
    if array.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(array) > spec.clip)) / array.size


def pack(spec: PackingSpec, values: npt.ArrayLike) -> list[int]:
    """Clip, encode and pack a 1-D vector into plaintext integers in ``[0, 2**(key_bits-1))``.

    Returns :meth:`PackingSpec.ciphertexts_for` ``(len(values))`` integers. Values beyond
    ``clip`` are clipped (see :func:`clipped_fraction`); NaN or infinity raises
    :class:`PackingError`.
    """
    array = _vector(values)
    scaled = np.rint(np.ldexp(np.clip(array, -spec.clip, spec.clip), spec.frac_bits))
    offset = spec.offset
    encoded: list[int]
    if 2 * offset < _INT64_LIMIT:
        encoded = (scaled.astype(np.int64) + offset).tolist()
    else:  # float -> int is exact for these integral floats
        encoded = [int(v) + offset for v in scaled.tolist()]
    slots, width = spec.slots_per_plaintext, spec.slot_bits
    packed = []
    for start in range(0, len(encoded), slots):
        number = 0
        for value in reversed(encoded[start : start + slots]):
            number = (number << width) | value
        packed.append(number)
    return packed


def unpack_sum(
    spec: PackingSpec, packed: Sequence[int], length: int, summands: int
) -> npt.NDArray[np.float64]:
    """Decode the element-wise sum of ``summands`` packed vectors of ``length`` values.

    :class:`PackingError` if ``summands`` is not in ``[1, max_summands]``, if the number of
    plaintexts does not match ``length``, or if a slot holds what no sum of ``summands``
    encoded vectors can hold (wrong count, or a contribution not encoded by this spec).
    """
    summands = _check_int(summands, "summands", 1)
    if summands > spec.max_summands:
        raise PackingError(
            f"a sum of {summands} vectors exceeds this packing's limit of {spec.max_summands}"
        )
    length = _check_int(length, "length", 0)
    expected = spec.ciphertexts_for(length)
    if len(packed) != expected:
        raise PackingError(
            f"{len(packed)} plaintexts given; {length} values are packed in {expected}"
        )
    slots, width = spec.slots_per_plaintext, spec.slot_bits
    mask = (1 << width) - 1
    limit = 1 << (slots * width)
    largest = summands * 2 * spec.offset
    raw: list[int] = []
    for index, item in enumerate(packed):
        number = _check_int(item, f"plaintext {index}", 0)
        if number >= limit:
            raise PackingError(f"plaintext {index} is larger than any packed sum")
        used = min(slots, length - index * slots)
        for _ in range(used):
            raw.append(number & mask)
            number >>= width
        if number:
            raise PackingError(f"plaintext {index} has data in slots beyond the vector's end")
    over = [i for i, slot in enumerate(raw) if slot > largest]
    if over:
        raise PackingError(
            f"value {over[0]} ({len(over)} in all) exceeds any sum of {summands} encoded "
            f"vectors: wrong summand count, or a contribution not encoded with this spec"
        )
    bias = summands * spec.offset
    if largest < _INT64_LIMIT:
        centred = np.array(raw, dtype=np.int64) - bias
        result: npt.NDArray[np.float64] = np.ldexp(centred.astype(np.float64), -spec.frac_bits)
        return result
    scale = 1 << spec.frac_bits
    return np.array([(slot - bias) / scale for slot in raw], dtype=np.float64)
