"""Merkle tree hashing, inclusion and consistency proofs of RFC 6962 / RFC 9162.

The tree is the one Certificate Transparency uses (RFC 9162, section 2.1):

* the hash of a leaf is ``SHA-256(0x00 || data)``;
* the hash of an interior node is ``SHA-256(0x01 || left || right)``;
* the Merkle Tree Hash of ``n`` entries is ``SHA-256()`` for ``n = 0``, the leaf hash for
  ``n = 1``, and otherwise the node hash of the MTH of the first ``k`` entries and the MTH
  of the rest, where ``k`` is the largest power of two smaller than ``n``.

:func:`root` computes the MTH straight from that recursive definition.
:class:`MerkleTree` is the incremental form a log keeps: it stores the hash of every
complete (perfect, aligned) subtree, level by level, so that appending a leaf is O(1)
amortized, the root of the tree at *any* earlier size takes O(log n) hashes, and the
proofs of RFC 9162 sections 2.1.3.1 and 2.1.4.1 take O(log² n) at worst. Its memory is
about 64 bytes per leaf (the leaf hashes plus every level above them).

:func:`verify_inclusion` and :func:`verify_consistency` follow the verification
algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step. They return nothing
and raise :class:`ProofError` when a proof does not verify, so that a forgotten
``if`` cannot turn a failed check into a pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from fedprop.errors import FedpropError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "ProofError",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

#: Size in bytes of every hash in the tree (SHA-256).
HASH_SIZE = 32
#: The Merkle Tree Hash of the empty list: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class ProofError(FedpropError):
    """A Merkle proof does not verify, or cannot exist for the sizes asked."""


def leaf_hash(data: bytes) -> bytes:
    """The RFC 9162 hash of one leaf: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 9162 hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    _check_hash(left, "left")
    _check_hash(right, "right")
    return _node(left, right)


def root(entries: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of ``entries`` (raw leaf data, hashed here), by definition.

    This is the recursive definition of RFC 9162 section 2.1.1 and costs O(n) hashes;
    logs use :class:`MerkleTree`, which gives the same value incrementally.
    """
    hashes = [leaf_hash(e) for e in entries]
    return _mth(hashes, 0, len(hashes))


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: Sequence[bytes], start: int, end: int) -> bytes:
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[start]
    k = _split(n)
    return _node(_mth(hashes, start, start + k), _mth(hashes, start + k, end))


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be a {HASH_SIZE}-byte hash")


def _check_size(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{what} must be a non-negative integer, not {value!r}")


class MerkleTree:
    """An append-only RFC 9162 Merkle tree over leaf hashes.

    ``levels[h]`` holds, concatenated, the hashes of the complete subtrees of ``2**h``
    leaves that start at multiples of ``2**h``: level 0 is the leaf hashes. Appending a
    leaf adds it to level 0 and carries upwards while a level has an even count, so each
    append costs one leaf write plus, amortized, one node hash. The nodes whose level
    is a set bit of the size form the frontier from which the current root is folded.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash (see :func:`leaf_hash`); return the leaf's index."""
        _check_hash(leaf_hash, "leaf hash")
        index = self._size
        levels = self._levels
        levels[0] += leaf_hash
        self._size += 1
        count = self._size
        node = leaf_hash
        height = 0
        while count % 2 == 0:
            level = levels[height]
            node = _node(bytes(level[-2 * HASH_SIZE : -HASH_SIZE]), node)
            height += 1
            if height == len(levels):
                levels.append(bytearray())
            levels[height] += node
            count //= 2
        return index

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash stored at ``index``."""
        _check_size(index, "index")
        if index >= self._size:
            raise ProofError(f"index {index} is outside a tree of size {self._size}")
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def root(self, size: int | None = None) -> bytes:
        """The Merkle Tree Hash of the first ``size`` leaves (default: all of them)."""
        size = self._checked_size(size, "size")
        if size == 0:
            return EMPTY_ROOT
        return self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 2.1.3.1).

        ``PATH(m, D[n])`` is empty for ``n = 1``; otherwise, with ``k`` the largest power of
        two below ``n``, it is ``PATH(m, D[0:k]) : MTH(D[k:n])`` for ``m < k`` and
        ``PATH(m - k, D[k:n]) : MTH(D[0:k])`` for ``m >= k``.
        """
        size = self._checked_size(size, "size")
        _check_size(index, "index")
        if index >= size:
            raise ProofError(f"index {index} is outside a tree of size {size}")
        proof: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:
            k = _split(end - start)
            if m < k:
                proof.append(self._range_hash(start + k, end))
                end = start + k
            else:
                proof.append(self._range_hash(start, start + k))
                start += k
                m -= k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the tree of ``old_size`` leaves is a prefix of ``new_size`` leaves.

        RFC 9162 section 2.1.4.1: ``PROOF(m, D[n]) = SUBPROOF(m, D[n], true)``, where
        ``SUBPROOF(m, D[m], true)`` is empty, ``SUBPROOF(m, D[m], false)`` is
        ``{MTH(D[m])}``, and for ``m < n`` with ``k`` the largest power of two below ``n``
        it is ``SUBPROOF(m, D[0:k], b) : MTH(D[k:n])`` if ``m <= k`` and
        ``SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])`` if ``m > k``. The proof for
        ``old_size`` 0 or ``old_size == new_size`` is empty.
        """
        new_size = self._checked_size(new_size, "new_size")
        _check_size(old_size, "old_size")
        if old_size > new_size:
            raise ProofError(f"old size {old_size} is larger than new size {new_size}")
        if old_size in (0, new_size):
            return []
        proof: list[bytes] = []
        start, end, m, complete = 0, new_size, old_size, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                proof.append(self._range_hash(start + k, end))
                end = start + k
            else:
                proof.append(self._range_hash(start, start + k))
                start += k
                m -= k
                complete = False
        if not complete:
            proof.append(self._range_hash(start, end))
        proof.reverse()
        return proof

    def _checked_size(self, size: int | None, what: str) -> int:
        if size is None:
            return self._size
        _check_size(size, what)
        if size > self._size:
            raise ProofError(f"{what} {size} is larger than the tree ({self._size} leaves)")
        return size

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH of the leaves ``[start, end)``; a stored hash when that subtree is complete."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            height = n.bit_length() - 1
            offset = (start >> height) * HASH_SIZE
            return bytes(self._levels[height][offset : offset + HASH_SIZE])
        k = _split(n)
        return _node(self._range_hash(start, start + k), self._range_hash(start + k, end))


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    RFC 9162 section 2.1.3.2. Raises :class:`ProofError` naming why the proof fails.
    """
    _check_size(index, "index")
    _check_size(size, "size")
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    for p in proof:
        _check_hash(p, "proof element")
    if index >= size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise ProofError(f"inclusion proof of leaf {index} does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(old_size, old_root)`` is a prefix of ``(new_size, new_root)``.

    RFC 9162 section 2.1.4.2 for ``0 < old_size < new_size``. For equal sizes the proof
    must be empty and the roots equal; every tree extends the empty tree (size 0, root
    :data:`EMPTY_ROOT`) with an empty proof. Raises :class:`ProofError` naming why the
    proof fails.
    """
    _check_size(old_size, "old_size")
    _check_size(new_size, "new_size")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    for p in proof:
        _check_hash(p, "proof element")
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError("the root of the empty tree is not SHA-256 of the empty string")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root (size {old_size})")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root (size {new_size})")
