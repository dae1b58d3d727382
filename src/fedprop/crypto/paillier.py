"""Paillier encryption of packed plaintexts, on raw integers with gmpy2.

Keys come from python-paillier (:func:`phe.paillier.generate_paillier_keypair`,
primes from the operating system's CSPRNG); the hot paths use only textbook
Paillier arithmetic (Paillier, EUROCRYPT 1999) with its standard speed-ups:

- ``g = n + 1``, so ``g^m = 1 + m*n (mod n^2)`` and a ciphertext is
  ``c = (1 + m*n) * r^n mod n^2`` with no exponentiation for the message;
- the random factor ``r^n`` is drawn as Damgard, Jurik and Nielsen propose
  (IJIS 2010, section 4.2): each encrypting process picks its own
  ``h = -x^2 mod n`` once per key and fixes ``h_s = h^n mod n^2``; every
  encryption then uses ``h_s^alpha`` for a fresh ``alpha`` of
  :data:`~fedprop.crypto.params.RANDOMNESS_EXPONENT_BITS` bits. Since ``h_s``
  is fixed, ``h_s^alpha`` comes from a precomputed table of
  ``h_s^(d * 2^(w*i))`` (fixed-base windowing): about ``bits / (2w)``
  multiplications modulo ``n^2`` instead of a full exponentiation, some six
  times faster than textbook encryption even with the private key's CRT;
- decryption by CRT: ``m_p = L_p(c^(p-1) mod p^2) * h_p mod p`` with
  ``L_p(x) = (x - 1) / p``, likewise modulo ``q``, then recombined;
- large batches are spread over the machine's cores (:func:`encrypt_many`,
  :func:`decrypt_many`).

Randomness: ``x`` and every ``alpha`` come from :mod:`secrets`, which reads the
operating system's CSPRNG on every call; no user-space random state exists, so
worker processes cannot share or repeat one. ``h`` is never sent anywhere and
differs between processes. Semantic security rests on the decisional composite
residuosity assumption and on DJN's short-exponent assumption (see
:data:`~fedprop.crypto.params.RANDOMNESS_EXPONENT_BITS` for the argument).

Who learns what: the coordinator holds only a :class:`PublicKey`. It can check and
multiply ciphertexts (:func:`add_ciphertexts`), which adds the plaintexts, but a
ciphertext tells it nothing about the plaintext (IND-CPA under DCR). Nodes hold the
:class:`PrivateKey` and decrypt only aggregates (the protocols check that). Paillier
ciphertexts are malleable: integrity comes from the signatures the protocols put on
every contribution, not from this module.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import operator
import os
import secrets
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Final, SupportsIndex, TypeVar

import gmpy2
import numpy as np
import numpy.typing as npt
from phe import paillier as phe_paillier

from fedprop.crypto.params import (
    ALLOWED_PAILLIER_BITS,
    DEFAULT_PAILLIER_BITS,
    MIN_PAILLIER_BITS,
    PRIME_TEST_ROUNDS,
    RANDOMNESS_EXPONENT_BITS,
)
from fedprop.errors import FedpropError

__all__ = [
    "CiphertextError",
    "KeyFormatError",
    "KeySizeError",
    "PaillierError",
    "PlaintextRangeError",
    "PrivateKey",
    "PublicKey",
    "add_ciphertexts",
    "add_encryptions",
    "ciphertexts_from_bytes",
    "ciphertexts_to_bytes",
    "decrypt",
    "decrypt_many",
    "encrypt",
    "encrypt_batch",
    "encrypt_many",
    "generate_keypair",
    "multi_exponentiate",
    "pack_ciphertexts",
    "scale_ciphertext",
]

_log = logging.getLogger(__name__)

_PUBLIC_MAGIC: Final = b"FPPK"
_PRIVATE_MAGIC: Final = b"FPSK"
_CIPHERTEXTS_MAGIC: Final = b"FPCT"
_FORMAT_VERSION: Final = 1
_FINGERPRINT_BYTES: Final = 32  # SHA-256

#: Below this many items per call, work stays in the calling process: starting a pool
#: (workers import fedprop and build their tables) costs ~0.3 s, about 100 decryptions or
#: 400 encryptions at 2048 bits. Speed settings, not security ones.
PARALLEL_MIN_DECRYPTIONS: Final = 200
PARALLEL_MIN_ENCRYPTIONS: Final = 800
#: Bits of ``alpha`` consumed per table row in fixed-base exponentiation: a table of
#: ``ceil(exponent_bits / w)`` rows of ``2^w`` entries (5.5 MB at 2048 bits, w = 6, built
#: in ~50 ms once per key and process); more bits, a bigger table, fewer multiplications.
FIXED_BASE_WINDOW_BITS: Final = 6


class PaillierError(FedpropError):
    """Base class of the Paillier errors."""


class KeySizeError(PaillierError):
    """A Paillier key size that fedprop does not generate or accept."""


class KeyFormatError(PaillierError):
    """Paillier key bytes that are malformed or inconsistent."""


class PlaintextRangeError(PaillierError):
    """A plaintext outside ``[0, n)``."""


class CiphertextError(PaillierError):
    """Ciphertexts that are malformed, out of range, or under another key."""


def _check_bits(bits: int) -> None:
    if bits < MIN_PAILLIER_BITS:
        raise KeySizeError(
            f"a {bits}-bit Paillier key is too small: at least {MIN_PAILLIER_BITS} bits required"
        )
    if bits not in ALLOWED_PAILLIER_BITS:
        allowed = ", ".join(str(b) for b in ALLOWED_PAILLIER_BITS)
        raise KeySizeError(f"Paillier key size {bits} is not allowed (allowed: {allowed} bits)")


def _as_int(value: object, what: str) -> int:
    """``value`` as a Python int (ints and gmpy2 integers); bools and floats are refused."""
    if type(value) is int:  # the common case; the protocol check below costs ~9 us
        return value
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    return operator.index(value)


@dataclass(frozen=True)
class PublicKey:
    """A Paillier public key, ``g = n + 1``. Safe to give to anyone.

    Construction checks the modulus: odd, of an allowed size
    (:data:`~fedprop.crypto.params.ALLOWED_PAILLIER_BITS`), else :class:`KeySizeError`.
    """

    n: int

    def __post_init__(self) -> None:
        n = _as_int(self.n, "n")
        object.__setattr__(self, "n", n)
        if n <= 0 or n % 2 == 0:
            raise KeyFormatError("a Paillier modulus must be a positive odd integer")
        _check_bits(n.bit_length())

    @property
    def bits(self) -> int:
        """Size of the modulus in bits."""
        return self.n.bit_length()

    @property
    def ciphertext_bytes(self) -> int:
        """Width of one serialized ciphertext (``n^2 < 2^(2*bits)``)."""
        return (2 * self.bits + 7) // 8

    @cached_property
    def _nsquare(self) -> gmpy2.mpz:
        return gmpy2.mpz(self.n) ** 2

    def to_bytes(self) -> bytes:
        """Canonical bytes: magic, version, length-prefixed big-endian ``n``."""
        return _PUBLIC_MAGIC + bytes([_FORMAT_VERSION]) + _frame_int(self.n)

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKey:
        """Parse :meth:`to_bytes` output; :class:`KeyFormatError` or :class:`KeySizeError`."""
        body = _strip_header(data, _PUBLIC_MAGIC, "public key")
        (n,) = _read_ints(body, 1, "public key")
        return cls(n)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical bytes: names the key in logs and blobs."""
        return self._fingerprint.hex()

    @cached_property
    def _fingerprint(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()


@dataclass(frozen=True)
class PrivateKey:
    """A Paillier private key: the primes ``p < q`` with ``p * q = n``.

    Never written anywhere in the clear: :meth:`to_bytes` exists to seal it to the
    other parties (:func:`fedprop.crypto.identity.seal`). Its repr hides the primes.
    """

    public: PublicKey
    p: int = field(repr=False)
    q: int = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.public, PublicKey):
            raise TypeError("public must be a PublicKey")
        p, q = sorted((_as_int(self.p, "p"), _as_int(self.q, "q")))
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        if p < 3 or p == q or p * q != self.public.n:
            raise KeyFormatError("the private key's primes do not match its public key")
        if math.gcd(self.public.n, (p - 1) * (q - 1)) != 1:
            raise KeyFormatError("the private key's primes are unsuitable for Paillier")

    @property
    def bits(self) -> int:
        """Size of the modulus in bits."""
        return self.public.bits

    @cached_property
    def _crt(self) -> _Crt:
        return _Crt.of(self.p, self.q)

    def to_bytes(self) -> bytes:
        """Canonical bytes: magic, version, length-prefixed big-endian ``p`` then ``q``."""
        return _PRIVATE_MAGIC + bytes([_FORMAT_VERSION]) + _frame_int(self.p) + _frame_int(self.q)

    @classmethod
    def from_bytes(cls, data: bytes) -> PrivateKey:
        """Parse :meth:`to_bytes` output, checking that ``p`` and ``q`` are prime."""
        body = _strip_header(data, _PRIVATE_MAGIC, "private key")
        p, q = _read_ints(body, 2, "private key")
        if p >= q:
            raise KeyFormatError("private key bytes are not canonical (p must precede q)")
        public = PublicKey(p * q)
        for prime in (p, q):
            if not gmpy2.is_prime(prime, PRIME_TEST_ROUNDS):
                raise KeyFormatError("private key bytes hold a factor that is not prime")
        return cls(public, p, q)


@dataclass(frozen=True)
class _Crt:
    """Precomputed CRT values for decryption with ``p`` and ``q``."""

    p: gmpy2.mpz
    q: gmpy2.mpz
    psquare: gmpy2.mpz
    qsquare: gmpy2.mpz
    h_p: gmpy2.mpz  # L_p(g^(p-1) mod p^2)^-1 mod p
    h_q: gmpy2.mpz
    p_inv: gmpy2.mpz  # p^-1 mod q

    @classmethod
    def of(cls, p_: int, q_: int) -> _Crt:
        p, q = gmpy2.mpz(p_), gmpy2.mpz(q_)
        n = p * q
        psquare, qsquare = p * p, q * q
        g = n + 1
        h_p = gmpy2.invert((gmpy2.powmod(g, p - 1, psquare) - 1) // p, p)
        h_q = gmpy2.invert((gmpy2.powmod(g, q - 1, qsquare) - 1) // q, q)
        return cls(
            p=p,
            q=q,
            psquare=psquare,
            qsquare=qsquare,
            h_p=h_p,
            h_q=h_q,
            p_inv=gmpy2.invert(p, q),
        )


# --- serialization helpers ----------------------------------------------------------------


def _frame_int(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return struct.pack(">H", len(raw)) + raw


def _strip_header(data: bytes, magic: bytes, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes")
    data = bytes(data)
    if not data.startswith(magic):
        raise KeyFormatError(f"not a fedprop Paillier {what}")
    if len(data) < len(magic) + 1 or data[len(magic)] != _FORMAT_VERSION:
        raise KeyFormatError(f"unsupported Paillier {what} format version")
    return data[len(magic) + 1 :]


def _read_ints(data: bytes, count: int, what: str) -> list[int]:
    values = []
    pos = 0
    for _ in range(count):
        if len(data) < pos + 2:
            raise KeyFormatError(f"{what} bytes are truncated")
        (length,) = struct.unpack_from(">H", data, pos)
        pos += 2
        raw = data[pos : pos + length]
        if len(raw) != length:
            raise KeyFormatError(f"{what} bytes are truncated")
        if length == 0 or raw[0] == 0:
            raise KeyFormatError(f"{what} bytes are not canonical")
        values.append(int.from_bytes(raw, "big"))
        pos += length
    if pos != len(data):
        raise KeyFormatError(f"{what} bytes have {len(data) - pos} trailing bytes")
    return values


# --- keys ---------------------------------------------------------------------------------


def generate_keypair(bits: int = DEFAULT_PAILLIER_BITS) -> PrivateKey:
    """A fresh job key pair (python-paillier prime generation from the OS CSPRNG).

    Raises :class:`KeySizeError` for a size under
    :data:`~fedprop.crypto.params.MIN_PAILLIER_BITS` or not in
    :data:`~fedprop.crypto.params.ALLOWED_PAILLIER_BITS`. Takes well under a second at
    2048 bits with gmpy2 (the time varies with where the primes fall).
    """
    _check_bits(_as_int(bits, "bits"))
    public, private = phe_paillier.generate_paillier_keypair(n_length=bits)
    return PrivateKey(PublicKey(int(public.n)), int(private.p), int(private.q))


def _public_of(key: PublicKey | PrivateKey) -> PublicKey:
    if isinstance(key, PrivateKey):
        return key.public
    if isinstance(key, PublicKey):
        return key
    raise TypeError(f"expected a PublicKey or PrivateKey, not {type(key).__name__}")


# --- encryption ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _FixedBase:
    """This process's randomness base ``h_s`` for one key, as a fixed-base table.

    ``rows[i][d] = h_s^(d * 2^(w*i)) mod n^2``, so ``h_s^alpha`` is the product of one
    entry per ``w``-bit digit of ``alpha``.
    """

    n: gmpy2.mpz
    nsquare: gmpy2.mpz
    exponent_bits: int
    rows: tuple[tuple[gmpy2.mpz, ...], ...]

    @classmethod
    def of(cls, n_: int) -> _FixedBase:
        n = gmpy2.mpz(n_)
        nsquare = n * n
        while True:
            x = gmpy2.mpz(secrets.randbelow(n_ - 1) + 1)
            if gmpy2.gcd(x, n) == 1:
                break
        base = gmpy2.powmod(-x * x % n, n, nsquare)  # h_s = h^n, h = -x^2 mod n
        exponent_bits = RANDOMNESS_EXPONENT_BITS[n.bit_length()]
        w = FIXED_BASE_WINDOW_BITS
        rows = []
        for _ in range(-(-exponent_bits // w)):
            row = [gmpy2.mpz(1)]
            for _ in range((1 << w) - 1):
                row.append(row[-1] * base % nsquare)
            rows.append(tuple(row))
            base = row[-1] * base % nsquare  # h_s^(2^(w*(i+1)))
        return cls(n, nsquare, exponent_bits, tuple(rows))

    def power(self, alpha: int) -> gmpy2.mpz:
        """``h_s^alpha mod n^2`` for ``0 <= alpha < 2^exponent_bits``."""
        mask, w = (1 << FIXED_BASE_WINDOW_BITS) - 1, FIXED_BASE_WINDOW_BITS
        result = gmpy2.mpz(1)
        for row in self.rows:
            digit = alpha & mask
            if digit:
                result = result * row[digit] % self.nsquare
            alpha >>= w
        return result

    def encrypt(self, m: int) -> gmpy2.mpz:
        """``(1 + m*n) * h_s^alpha mod n^2`` with a fresh ``alpha`` from the OS CSPRNG."""
        alpha = secrets.randbits(self.exponent_bits)
        return (1 + m * self.n) * self.power(alpha) % self.nsquare


@lru_cache(maxsize=4)
def _fixed_base(n: int) -> _FixedBase:
    """This process's table for modulus ``n`` (built on first use; a few keys are kept)."""
    return _FixedBase.of(n)


def _checked_plaintext(public: PublicKey, plaintext: object) -> int:
    m = _as_int(plaintext, "plaintext")
    if not 0 <= m < public.n:
        raise PlaintextRangeError(
            f"a plaintext must lie in [0, n) for the {public.bits}-bit key; "
            f"got a {m.bit_length()}-bit {'negative ' if m < 0 else ''}value"
        )
    return m


def encrypt(key: PublicKey | PrivateKey, plaintext: int) -> int:
    """Encrypt an integer in ``[0, n)`` with fresh randomness.

    The public key is all it needs (a :class:`PrivateKey` is accepted for convenience).
    :class:`PlaintextRangeError` if ``plaintext`` is out of range.
    """
    public = _public_of(key)
    m = _checked_plaintext(public, plaintext)
    return _encrypt_checked(key, [m])[0]


def _encrypt_checked(key: PublicKey | PrivateKey, plaintexts: Sequence[int]) -> list[int]:
    table = _fixed_base(_public_of(key).n)
    return [int(table.encrypt(m)) for m in plaintexts]


def encrypt_many(
    key: PublicKey | PrivateKey, plaintexts: Sequence[int], workers: int | None = None
) -> list[int]:
    """Encrypt each plaintext (each in ``[0, n)``), in order, with fresh randomness each.

    ``workers`` processes share a large batch (default: every core); small batches
    (under :data:`PARALLEL_MIN_ENCRYPTIONS`) are encrypted in this process. Each worker
    draws its randomness from the OS CSPRNG itself; no random state crosses processes.
    Workers start from a "forkserver" (never a fork of a threaded process), so, as for
    any multiprocessing code, a script calling this must guard its entry point with
    ``if __name__ == "__main__":``; if a pool cannot start, the batch runs in-process.
    """
    public = _public_of(key)
    checked = [_checked_plaintext(public, m) for m in plaintexts]
    return _run_batched(_encrypt_checked, key, checked, workers, PARALLEL_MIN_ENCRYPTIONS)


# --- decryption ---------------------------------------------------------------------------


def _decrypt_crt_raw(crt: _Crt, c: gmpy2.mpz) -> gmpy2.mpz:
    m_p = (gmpy2.powmod(c, crt.p - 1, crt.psquare) - 1) // crt.p * crt.h_p % crt.p
    m_q = (gmpy2.powmod(c, crt.q - 1, crt.qsquare) - 1) // crt.q * crt.h_q % crt.q
    return m_p + crt.p * ((m_q - m_p) * crt.p_inv % crt.q)


def _decrypt_checked(key: PrivateKey, ciphertexts: Sequence[int]) -> list[int]:
    crt = key._crt
    return [int(_decrypt_crt_raw(crt, gmpy2.mpz(c))) for c in ciphertexts]


def decrypt(key: PrivateKey, ciphertext: int) -> int:
    """Decrypt one ciphertext (CRT). :class:`CiphertextError` if it is not valid for the key."""
    return decrypt_many(key, [ciphertext], workers=1)[0]


def decrypt_many(
    key: PrivateKey, ciphertexts: Sequence[int], workers: int | None = None
) -> list[int]:
    """Decrypt each ciphertext, in order; large batches use ``workers`` processes.

    Every ciphertext is checked first (:class:`CiphertextError` if out of range or not a
    unit modulo ``n``).
    """
    if not isinstance(key, PrivateKey):
        raise TypeError("decryption needs the PrivateKey")
    checked = _check_ciphertexts(key.public, ciphertexts, "ciphertext")
    return _run_batched(_decrypt_checked, key, checked, workers, PARALLEL_MIN_DECRYPTIONS)


# --- the homomorphic sum ------------------------------------------------------------------


def _in_range(public: PublicKey, values: Sequence[int], what: str) -> list[int]:
    """Ciphertexts checked for type and range only (``0 < c < n^2``), not for being units:
    for ciphertexts made locally (:func:`_check_ciphertexts` adds the unit test)."""
    nsquare = public._nsquare
    out = []
    for i, value in enumerate(values):
        try:
            c = _as_int(value, what)
        except TypeError as exc:
            raise CiphertextError(f"{what} {i}: {exc}") from None
        if not 0 < c < nsquare:
            raise CiphertextError(f"{what} {i} is out of range for this key (must be in [1, n^2))")
        out.append(c)
    return out


def _check_units(public: PublicKey, values: Sequence[int], what: str) -> None:
    """Every value is a unit modulo ``n``, tested at once: the product modulo ``n`` of units
    is a unit, and a value sharing a factor with ``n`` makes the product share it (one
    multiplication modulo ``n`` per value, one ``gcd``; the culprit is named if any)."""
    n = gmpy2.mpz(public.n)
    product = gmpy2.mpz(1)
    for c in values:
        product = product * c % n
    if gmpy2.gcd(product, n) != 1:
        first = next(i for i, c in enumerate(values) if gmpy2.gcd(c, n) != 1)
        raise CiphertextError(f"{what} {first} is not a unit modulo n: not a valid ciphertext")


def _check_ciphertexts(public: PublicKey, values: Sequence[int], what: str) -> list[int]:
    """Ciphertexts checked for type, range and being units modulo ``n``."""
    checked = _in_range(public, values, what)
    _check_units(public, checked, what)
    return checked


def add_ciphertexts(public: PublicKey, ciphertexts: Sequence[Sequence[int]]) -> list[int]:
    """Element-wise homomorphic sum of several parties' ciphertext lists.

    The product modulo ``n^2`` of the ``i``-th ciphertexts encrypts the sum of their
    plaintexts modulo ``n`` (the packing codec keeps that sum below ``n``). Needs only
    the public key. Every ciphertext is checked; lists must be non-empty in number and
    of equal length, else :class:`CiphertextError`.
    """
    public = _public_of(public)
    if not ciphertexts:
        raise CiphertextError("no ciphertext lists to add")
    length = len(ciphertexts[0])
    for k, party in enumerate(ciphertexts):
        if len(party) != length:
            raise CiphertextError(
                f"ciphertext list {k} has {len(party)} ciphertexts, list 0 has {length}"
            )
    nsquare = public._nsquare
    total = [gmpy2.mpz(c) for c in _check_ciphertexts(public, ciphertexts[0], "list 0 item")]
    for k, party in enumerate(ciphertexts[1:], start=1):
        checked = _check_ciphertexts(public, party, f"list {k} item")
        total = [t * c % nsquare for t, c in zip(total, checked, strict=True)]
    return [int(t) for t in total]


# --- serialization of ciphertexts ---------------------------------------------------------

_CT_HEADER: Final = struct.Struct(">4sB32sI")  # magic, version, key fingerprint, count


def ciphertexts_to_bytes(public: PublicKey, ciphertexts: Sequence[int]) -> bytes:
    """Canonical bytes: a header binding the key fingerprint and count, then fixed-width
    big-endian ciphertexts (:attr:`PublicKey.ciphertext_bytes` each)."""
    public = _public_of(public)
    checked = _check_ciphertexts(public, ciphertexts, "ciphertext")
    width = public.ciphertext_bytes
    head = _CT_HEADER.pack(_CIPHERTEXTS_MAGIC, _FORMAT_VERSION, public._fingerprint, len(checked))
    return head + b"".join(c.to_bytes(width, "big") for c in checked)


def ciphertexts_from_bytes(public: PublicKey, blob: bytes) -> list[int]:
    """Parse :func:`ciphertexts_to_bytes` output under ``public``.

    :class:`CiphertextError` naming the problem: not ciphertexts, another version,
    another key (fingerprint mismatch), truncated or padded, a value out of range.
    """
    public = _public_of(public)
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError("blob must be bytes")
    blob = bytes(blob)
    if len(blob) < _CT_HEADER.size:
        raise CiphertextError(f"ciphertext blob is truncated ({len(blob)} bytes, no header)")
    magic, version, fingerprint, count = _CT_HEADER.unpack_from(blob)
    if magic != _CIPHERTEXTS_MAGIC:
        raise CiphertextError("not a fedprop ciphertext blob")
    if version != _FORMAT_VERSION:
        raise CiphertextError(f"unsupported ciphertext blob version {version}")
    if fingerprint != public._fingerprint:
        raise CiphertextError(
            f"ciphertexts are under key {fingerprint.hex()[:16]}..., "
            f"not this job's key {public.fingerprint()[:16]}..."
        )
    width = public.ciphertext_bytes
    expected = _CT_HEADER.size + count * width
    if len(blob) != expected:
        state = "truncated" if len(blob) < expected else "followed by extra bytes"
        raise CiphertextError(
            f"ciphertext blob of {len(blob)} bytes is {state}: {count} ciphertexts "
            f"need {expected} bytes"
        )
    view = memoryview(blob)[_CT_HEADER.size :]
    values = [int.from_bytes(view[i * width : (i + 1) * width], "big") for i in range(count)]
    return _check_ciphertexts(public, values, "ciphertext")


# --- process pool -------------------------------------------------------------------------


_K = TypeVar("_K", bound=PublicKey | PrivateKey)


def _run_batched(
    func: Callable[[_K, Sequence[int]], list[int]],
    key: _K,
    items: list[int],
    workers: int | None,
    min_items: int,
) -> list[int]:
    count = (os.cpu_count() or 1) if workers is None else _as_int(workers, "workers")
    if count < 1:
        raise ValueError("workers must be at least 1")
    count = min(count, len(items))
    if count <= 1 or len(items) < min_items:
        return func(key, items)
    # Several chunks per worker even out uneven progress; order is kept by map().
    size = math.ceil(len(items) / (2 * count))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    try:
        with ProcessPoolExecutor(max_workers=count, mp_context=_pool_context()) as pool:
            results = list(pool.map(func, [key] * len(chunks), chunks))
    except (OSError, BrokenProcessPool) as exc:
        _log.warning("process pool unavailable (%s); continuing in this process", exc)
        return func(key, items)
    return [value for chunk in results for value in chunk]


def _pool_context() -> multiprocessing.context.BaseContext:
    # "forkserver" starts workers from a clean single-threaded server: forking a process
    # that runs threads (Flower, gRPC, torch) can deadlock. "spawn" where it is missing.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


# --- computing on many ciphertexts (vertical training) -------------------------------------
#
# The helpers below serve protocols that compute on ciphertexts row by row: encrypt a
# long vector, add a fresh encryption to each ciphertext of a vector, and raise many
# ciphertexts to many small exponents at once. Their heavy work can be spread over a
# caller-owned :class:`concurrent.futures.Executor` (a process pool kept for a whole
# job: starting one per call costs more than a batch). Every encryption still draws a
# fresh ``alpha`` from the OS CSPRNG in the process that makes it.

#: Window of the larger fixed-base table of :func:`encrypt_batch` and
#: :func:`add_encryptions`: ``ceil(exponent_bits / 10)`` rows of 1,024 entries (about
#: 55 MB at 2048 bits, built in ~0.5 s once per key and process), 103 multiplications
#: per encryption instead of 171. Speed setting, not a security one: the randomness is
#: the same ``h_s^alpha`` as :func:`encrypt`'s.
WIDE_FIXED_BASE_WINDOW_BITS: Final = 10


@dataclass(frozen=True)
class _WideFixedBase:
    """Like :class:`_FixedBase` with a wider window (its own ``h``, drawn per process)."""

    n: gmpy2.mpz
    nsquare: gmpy2.mpz
    exponent_bits: int
    window: int
    rows: tuple[tuple[gmpy2.mpz, ...], ...]

    @classmethod
    def of(cls, n_: int, window: int) -> _WideFixedBase:
        n = gmpy2.mpz(n_)
        nsquare = n * n
        while True:
            x = gmpy2.mpz(secrets.randbelow(n_ - 1) + 1)
            if gmpy2.gcd(x, n) == 1:
                break
        base = gmpy2.powmod(-x * x % n, n, nsquare)  # h_s = h^n, h = -x^2 mod n
        exponent_bits = RANDOMNESS_EXPONENT_BITS[n.bit_length()]
        rows = []
        for _ in range(-(-exponent_bits // window)):
            row = [gmpy2.mpz(1)]
            for _ in range((1 << window) - 1):
                row.append(row[-1] * base % nsquare)
            rows.append(tuple(row))
            base = row[-1] * base % nsquare  # h_s^(2^(window*(i+1)))
        return cls(n, nsquare, exponent_bits, window, tuple(rows))

    def randomness(self) -> gmpy2.mpz:
        """``h_s^alpha mod n^2`` for a fresh ``alpha`` of ``exponent_bits`` bits."""
        alpha = secrets.randbits(self.exponent_bits)
        mask, w = (1 << self.window) - 1, self.window
        result = gmpy2.mpz(1)
        for row in self.rows:
            digit = alpha & mask
            if digit:
                result = result * row[digit] % self.nsquare
            alpha >>= w
        return result


@lru_cache(maxsize=2)
def _wide_fixed_base(n: int) -> _WideFixedBase:
    return _WideFixedBase.of(n, WIDE_FIXED_BASE_WINDOW_BITS)


def _encrypt_wide(n: int, plaintexts: Sequence[int]) -> list[int]:
    table = _wide_fixed_base(n)
    return [int((1 + m * table.n) * table.randomness() % table.nsquare) for m in plaintexts]


def _add_fresh_wide(n: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    table = _wide_fixed_base(n)
    nsquare = table.nsquare
    return [
        int(gmpy2.mpz(c) * (1 + m * table.n) % nsquare * table.randomness() % nsquare)
        for c, m in pairs
    ]


_T = TypeVar("_T")
_R = TypeVar("_R")


def _split(items: Sequence[_T], parts: int) -> list[Sequence[_T]]:
    size = max(1, math.ceil(len(items) / max(1, parts)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _spread(
    func: Callable[[int, Sequence[_T]], list[_R]],
    n: int,
    items: Sequence[_T],
    executor: Executor | None,
    parts: int,
) -> list[_R]:
    """``func(n, items)``, on ``executor`` in ``parts`` ordered chunks when one is given."""
    if executor is None or parts <= 1 or len(items) < 2 * parts:
        return func(n, items)
    chunks = _split(items, parts)
    results = executor.map(func, [n] * len(chunks), chunks)
    return [value for chunk in results for value in chunk]


def _plaintexts(public: PublicKey, values: Sequence[int]) -> list[int]:
    n = public.n
    out = []
    for value in values:
        m = _as_int(value, "plaintext")
        if not 0 <= m < n:
            _checked_plaintext(public, m)  # raises PlaintextRangeError with the details
        out.append(m)
    return out


def _check_parts(parts: int) -> int:
    parts = _as_int(parts, "parts")
    if parts < 1:
        raise ValueError("parts must be at least 1")
    return parts


def encrypt_batch(
    key: PublicKey | PrivateKey,
    plaintexts: Sequence[int],
    executor: Executor | None = None,
    parts: int = 2,
) -> list[int]:
    """Encrypt each plaintext (each in ``[0, n)``), in order, with fresh randomness each.

    The same ciphertexts as :func:`encrypt_many` (DJN randomness from a per-process base)
    with a wider fixed-base table (:data:`WIDE_FIXED_BASE_WINDOW_BITS`), spread over
    ``executor`` in ``parts`` chunks when one is given (the caller owns the pool and keeps
    it for many calls). :class:`PlaintextRangeError` for a value out of range.
    """
    public = _public_of(key)
    checked = _plaintexts(public, plaintexts)
    return _spread(_encrypt_wide, public.n, checked, executor, _check_parts(parts))


def add_encryptions(
    key: PublicKey | PrivateKey,
    ciphertexts: Sequence[int],
    plaintexts: Sequence[int],
    executor: Executor | None = None,
    parts: int = 2,
) -> list[int]:
    """``c_i * Enc(m_i)`` for each pair: encrypts ``x_i + m_i (mod n)`` with fresh randomness.

    The result is a fresh encryption: whoever made ``c_i`` (and knows its randomness)
    cannot strip the new factor ``h_s^alpha`` to read ``m_i`` from it. Adding a plaintext
    without fresh randomness (``c * (1 + m*n)``) would let them. Ciphertexts are checked for
    range (:class:`CiphertextError`; they should come from :func:`ciphertexts_from_bytes`
    or this process), plaintexts too (:class:`PlaintextRangeError`).
    """
    public = _public_of(key)
    if len(ciphertexts) != len(plaintexts):
        raise CiphertextError(
            f"{len(ciphertexts)} ciphertexts but {len(plaintexts)} plaintexts to add"
        )
    checked_c = _in_range(public, ciphertexts, "ciphertext")
    checked_m = _plaintexts(public, plaintexts)
    pairs = list(zip(checked_c, checked_m, strict=True))
    return _spread(_add_fresh_wide, public.n, pairs, executor, _check_parts(parts))


def _bucket_window(count: int, bits: int) -> int:
    """The window ``c`` that minimizes ``ceil(bits/c) * (count + 2 * 2^c)`` multiplications."""
    best, best_cost = 1, math.inf
    for c in range(1, min(bits, 16) + 1):
        cost = -(-bits // c) * (count + 2 * (1 << c))
        if cost < best_cost:
            best, best_cost = c, cost
    return best


def _windowed_power(
    nsquare: gmpy2.mpz,
    bases: Sequence[gmpy2.mpz],
    rows: npt.NDArray[np.intp],
    magnitudes: npt.NDArray[np.int64],
    bits: int,
) -> gmpy2.mpz:
    """``prod bases[rows[k]]^magnitudes[k]``: per window of ``c`` bits, each base goes to the
    bucket of its digit, and ``prod_d B_d^d`` costs two multiplications per bucket (running
    products from the top digit down)."""
    c = _bucket_window(len(rows), bits)
    mask = (1 << c) - 1
    result = gmpy2.mpz(1)
    for t in reversed(range(-(-bits // c))):
        if result != 1:
            for _ in range(c):
                result = result * result % nsquare
        digits = (magnitudes >> (t * c)) & mask
        buckets: list[gmpy2.mpz | None] = [None] * (mask + 1)
        for i, d in zip(rows.tolist(), digits.tolist(), strict=True):
            if d:
                held = buckets[d]
                buckets[d] = bases[i] if held is None else held * bases[i] % nsquare
        running: gmpy2.mpz | None = None
        total: gmpy2.mpz | None = None
        for held in reversed(buckets[1:]):  # digits mask .. 1
            if held is not None:
                running = held if running is None else running * held % nsquare
            if running is not None:
                total = running if total is None else total * running % nsquare
        if total is not None:
            result = result * total % nsquare
    return result


def _valued_power(
    nsquare: gmpy2.mpz,
    bases: Sequence[gmpy2.mpz],
    rows: npt.NDArray[np.intp],
    values: npt.NDArray[np.int64],
    which: npt.NDArray[np.intp],
) -> gmpy2.mpz:
    """The same product when the magnitudes take few distinct ``values`` (ascending;
    ``which[k]`` indexes the value of ``rows[k]``): one bucket per value, then
    ``prod_v B_v^v`` as running products raised to the gaps between consecutive values."""
    buckets: list[gmpy2.mpz | None] = [None] * len(values)
    for i, v in zip(rows.tolist(), which.tolist(), strict=True):
        held = buckets[v]
        buckets[v] = bases[i] if held is None else held * bases[i] % nsquare
    gaps = np.diff(values, prepend=0).tolist()
    running, total = gmpy2.mpz(1), gmpy2.mpz(1)
    for held, gap in zip(reversed(buckets), reversed(gaps), strict=True):
        running = running * held % nsquare  # every value has at least one row
        total = total * gmpy2.powmod(running, gap, nsquare) % nsquare
    return total


def _magnitude_power(
    nsquare: gmpy2.mpz,
    bases: Sequence[gmpy2.mpz],
    rows: npt.NDArray[np.intp],
    magnitudes: npt.NDArray[np.int64],
) -> gmpy2.mpz:
    """``prod bases[rows[k]]^magnitudes[k]`` (magnitudes positive), by whichever bucketing
    costs fewer multiplications: digits of a window (:func:`_windowed_power`) or distinct
    values (:func:`_valued_power`, for columns such as indicators or small counts)."""
    bits = int(magnitudes.max()).bit_length()
    c = _bucket_window(len(rows), bits)
    windowed = -(-bits // c) * (len(rows) + 2 * (1 << c))
    values, which = np.unique(magnitudes, return_inverse=True)
    gaps = np.diff(values, prepend=0)
    valued = len(rows) + int(np.sum(2 + 1.5 * np.log2(gaps.astype(np.float64) + 1)))
    if valued < windowed:
        return _valued_power(nsquare, bases, rows, values, which.astype(np.intp))
    return _windowed_power(nsquare, bases, rows, magnitudes, bits)


def _column_power(
    nsquare: gmpy2.mpz, bases: Sequence[gmpy2.mpz], exponents: npt.NDArray[np.int64]
) -> gmpy2.mpz:
    """``prod_i bases[i]^exponents[i] mod n^2`` by the bucket method (signed exponents).

    Positive and negative exponents are bucketed apart; the negative product is inverted
    once at the end, so no base is ever raised to a full-size exponent.
    """
    result = gmpy2.mpz(1)
    for negative in (False, True):
        rows = np.flatnonzero(exponents < 0 if negative else exponents > 0)
        if rows.size == 0:
            continue
        part = _magnitude_power(nsquare, bases, rows, np.abs(exponents[rows]))
        result = result * (gmpy2.invert(part, nsquare) if negative else part) % nsquare
    return result


def _column_powers(
    n: int, work: Sequence[tuple[Sequence[int], npt.NDArray[np.int64]]]
) -> list[int]:
    nsquare = gmpy2.mpz(n) ** 2
    out = []
    for bases, exponents in work:
        mpz_bases = [gmpy2.mpz(b) for b in bases]
        out.append(int(_column_power(nsquare, mpz_bases, exponents)))
    return out


def multi_exponentiate(
    key: PublicKey | PrivateKey,
    bases: Sequence[int],
    exponents: npt.ArrayLike,
    executor: Executor | None = None,
    parts: int = 2,
) -> list[int]:
    """For each column ``j`` of ``exponents`` (rows x columns, signed), the ciphertext
    ``prod_i bases[i]^exponents[i, j] mod n^2``: an encryption of
    ``sum_i m_i * exponents[i, j] (mod n)`` where ``bases[i]`` encrypts ``m_i``.

    A multi-exponentiation by the bucket (Pippenger) method: per window of ``c`` exponent
    bits, each base is multiplied into one bucket and the buckets are combined with
    about ``2^(c+1)`` multiplications, so a column costs about
    ``bits / c * (rows + 2^(c+1))`` multiplications modulo ``n^2`` instead of
    ``rows * 1.2 * bits`` for separate exponentiations; a column with few distinct values
    (indicators, small counts) is bucketed by value instead, about ``rows`` multiplications.
    Negative exponents go to their own buckets and cost one inversion per column.
    Exponents must be below ``2^62`` in magnitude. Columns are spread over ``executor`` in
    ``parts`` groups when one is given.
    The bases are checked for range (:class:`CiphertextError`; they should come from
    :func:`ciphertexts_from_bytes` or this process); the result is not re-randomized.
    """
    public = _public_of(key)
    checked = _in_range(public, bases, "base")
    try:
        matrix = np.asarray(exponents)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"exponents are not an integer matrix: {exc}") from None
    if matrix.ndim != 2 or matrix.shape[0] != len(checked):
        raise ValueError(
            f"exponents must be a (rows={len(checked)}, columns) matrix, got shape {matrix.shape}"
        )
    if not np.issubdtype(matrix.dtype, np.integer):
        raise ValueError(f"exponents must be integers, not {matrix.dtype}")
    matrix = matrix.astype(np.int64)
    if matrix.size and int(np.abs(matrix).max()) >= 2**62:
        raise ValueError("exponents must be below 2**62 in magnitude")
    columns = [np.ascontiguousarray(matrix[:, j]) for j in range(matrix.shape[1])]
    parts = _check_parts(parts)
    if executor is None or parts <= 1 or len(columns) < 2:
        return _column_powers(public.n, [(checked, col) for col in columns])
    # Whole columns per task (each task gets every base): no bucket work is duplicated.
    groups = [list(range(k, len(columns), parts)) for k in range(min(parts, len(columns)))]
    futures = [
        executor.submit(_column_powers, public.n, [(checked, columns[j]) for j in group])
        for group in groups
    ]
    out: list[int] = [0] * len(columns)
    for group, future in zip(groups, futures, strict=True):
        for j, value in zip(group, future.result(), strict=True):
            out[j] = value
    return out


def pack_ciphertexts(
    key: PublicKey | PrivateKey, ciphertexts: Sequence[int], slot_bits: int
) -> int:
    """``prod_j c_j^(2^(j * slot_bits)) mod n^2``: one ciphertext of
    ``sum_j x_j * 2^(j * slot_bits) (mod n)``, by Horner's rule (``slot_bits`` squarings per
    ciphertext). The caller chooses ``slot_bits`` so that the slots neither overlap nor
    wrap modulo ``n``. Not re-randomized.
    """
    public = _public_of(key)
    checked = _in_range(public, ciphertexts, "ciphertext")
    slot_bits = _as_int(slot_bits, "slot_bits")
    if slot_bits < 1 or not checked:
        raise ValueError("packing needs at least one ciphertext and slot_bits >= 1")
    nsquare = public._nsquare
    acc = gmpy2.mpz(checked[-1])
    for c in reversed(checked[:-1]):
        for _ in range(slot_bits):
            acc = acc * acc % nsquare
        acc = acc * c % nsquare
    return int(acc)


def scale_ciphertext(key: PublicKey | PrivateKey, ciphertext: int, factor: int) -> int:
    """``c^factor mod n^2`` (``factor`` signed): an encryption of ``factor * x (mod n)``.
    Not re-randomized."""
    public = _public_of(key)
    (c,) = _in_range(public, [ciphertext], "ciphertext")
    factor = _as_int(factor, "factor")
    nsquare = public._nsquare
    if factor < 0:
        return int(gmpy2.powmod(gmpy2.invert(c, nsquare), -factor, nsquare))
    return int(gmpy2.powmod(c, factor, nsquare))
