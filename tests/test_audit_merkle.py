"""The Merkle tree against RFC 9162's definitions, known answers, and tampered proofs."""

from __future__ import annotations

import functools
import hashlib

import pytest

from fedprop.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 70
LEAVES = [f"entry {i}".encode() for i in range(MAX_SIZE)]

# The leaves and tree heads of the Certificate Transparency test data (sizes 1 to 8).
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_CONSISTENCY = {
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


# --- RFC 9162 section 2.1, written out as recursive definitions over LEAVES[start:end] ------


def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@functools.cache
def ref_mth(start: int, end: int) -> bytes:
    n = end - start
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + LEAVES[start]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + ref_mth(start, start + k) + ref_mth(start + k, end)).digest()


def ref_path(m: int, start: int, end: int) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, start, start + k), ref_mth(start + k, end)]
    return [*ref_path(m - k, start + k, end), ref_mth(start, start + k)]


def ref_subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if complete else [ref_mth(start, end)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, start, start + k, complete), ref_mth(start + k, end)]
    return [*ref_subproof(m - k, start + k, end, False), ref_mth(start, start + k)]


def ref_proof(m: int, n: int) -> list[bytes]:
    return [] if m in (0, n) else ref_subproof(m, 0, n, True)


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    return MerkleTree(leaf_hash(leaf) for leaf in LEAVES)


# --- known answers ------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert root([]) == EMPTY_ROOT
    assert MerkleTree().root() == EMPTY_ROOT


def test_one_leaf_root_is_the_domain_separated_leaf_hash() -> None:
    data = b"one entry"
    assert root([data]) == hashlib.sha256(b"\x00" + data).digest()
    assert MerkleTree([leaf_hash(data)]).root() == hashlib.sha256(b"\x00" + data).digest()


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert leaf_hash(left + right) != node_hash(left, right)


@pytest.mark.parametrize("size", range(1, 9))
def test_certificate_transparency_tree_heads(size: int) -> None:
    assert root(CT_LEAVES[:size]).hex() == CT_ROOTS[size - 1]
    ct_tree = MerkleTree(leaf_hash(leaf) for leaf in CT_LEAVES)
    assert ct_tree.root(size).hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize(("old", "new"), sorted(CT_CONSISTENCY))
def test_certificate_transparency_consistency_proofs(old: int, new: int) -> None:
    ct_tree = MerkleTree(leaf_hash(leaf) for leaf in CT_LEAVES)
    proof = ct_tree.consistency_proof(old, new)
    assert [p.hex() for p in proof] == CT_CONSISTENCY[(old, new)]
    verify_consistency(old, new, ct_tree.root(old), ct_tree.root(new), proof)


# --- the incremental tree against the definitions, every size up to MAX_SIZE --------------


def test_incremental_roots_equal_the_recursive_definition(tree: MerkleTree) -> None:
    grown = MerkleTree()
    for size in range(MAX_SIZE + 1):
        assert tree.root(size) == ref_mth(0, size) == root(LEAVES[:size])
        assert grown.root() == ref_mth(0, size)
        if size < MAX_SIZE:
            assert grown.append(leaf_hash(LEAVES[size])) == size
    assert tree.leaf_hash(5) == leaf_hash(LEAVES[5])


def test_every_inclusion_proof_matches_and_verifies(tree: MerkleTree) -> None:
    for size in range(1, MAX_SIZE + 1):
        head = ref_mth(0, size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref_path(index, 0, size)
            verify_inclusion(index, size, leaf_hash(LEAVES[index]), proof, head)


def test_every_consistency_proof_matches_and_verifies(tree: MerkleTree) -> None:
    for new in range(MAX_SIZE + 1):
        for old in range(new + 1):
            proof = tree.consistency_proof(old, new)
            assert proof == ref_proof(old, new)
            verify_consistency(old, new, ref_mth(0, old), ref_mth(0, new), proof)


# --- proofs that must fail ----------------------------------------------------------------


def _flip(proof: list[bytes], i: int) -> list[bytes]:
    bad = list(proof)
    bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
    return bad


def test_tampered_inclusion_proofs_fail(tree: MerkleTree) -> None:
    for size in range(1, 20):
        head = tree.root(size)
        for index in range(size):
            leaf = tree.leaf_hash(index)
            proof = tree.inclusion_proof(index, size)
            for i in range(len(proof)):
                with pytest.raises(ProofError):
                    verify_inclusion(index, size, leaf, _flip(proof, i), head)
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaf_hash(b"other"), proof, head)
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaf, [*proof, head], head)
            if proof:
                with pytest.raises(ProofError):
                    verify_inclusion(index, size, leaf, proof[:-1], head)
            if size > 1:
                with pytest.raises(ProofError):
                    verify_inclusion((index + 1) % size, size, leaf, proof, head)


def test_tampered_consistency_proofs_fail(tree: MerkleTree) -> None:
    for new in range(2, 20):
        for old in range(1, new):
            proof = tree.consistency_proof(old, new)
            old_root, new_root = tree.root(old), tree.root(new)
            for i in range(len(proof)):
                with pytest.raises(ProofError):
                    verify_consistency(old, new, old_root, new_root, _flip(proof, i))
            with pytest.raises(ProofError):
                verify_consistency(old, new, tree.root(old - 1), new_root, proof)
            with pytest.raises(ProofError):
                verify_consistency(old, new, old_root, tree.root(new - 1), proof)
            with pytest.raises(ProofError):
                verify_consistency(old, new, old_root, new_root, proof[:-1])
            with pytest.raises(ProofError):
                verify_consistency(old, new, old_root, new_root, [*proof, new_root])


def test_consistency_edge_cases(tree: MerkleTree) -> None:
    verify_consistency(0, 5, EMPTY_ROOT, tree.root(5), [])
    verify_consistency(5, 5, tree.root(5), tree.root(5), [])
    with pytest.raises(ProofError, match="two different roots"):
        verify_consistency(5, 5, tree.root(5), tree.root(4), [])
    with pytest.raises(ProofError, match="larger than new size"):
        verify_consistency(6, 5, tree.root(6), tree.root(5), [])
    with pytest.raises(ProofError, match="empty"):
        verify_consistency(3, 5, tree.root(3), tree.root(5), [])
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 5, tree.root(1), tree.root(5), [])
    with pytest.raises(ProofError, match="larger"):
        tree.consistency_proof(6, 5)


def test_bad_inputs_are_refused(tree: MerkleTree) -> None:
    with pytest.raises(ProofError, match="32-byte"):
        MerkleTree().append(b"short")
    with pytest.raises(ProofError, match="outside"):
        tree.inclusion_proof(MAX_SIZE, MAX_SIZE)
    with pytest.raises(ProofError, match="larger than the tree"):
        tree.root(MAX_SIZE + 1)
    with pytest.raises(ProofError, match="non-negative"):
        tree.leaf_hash(-1)
    with pytest.raises(ProofError, match="outside"):
        verify_inclusion(3, 3, tree.leaf_hash(0), [], tree.root(3))
