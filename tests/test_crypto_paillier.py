"""Paillier on raw integers: correctness at 2048 bits, DJN randomness, refusals."""

from __future__ import annotations

import logging
import secrets

import gmpy2
import numpy as np
import pytest

from fedprop.crypto import paillier
from fedprop.crypto.packing import PackingSpec, pack, unpack_sum
from fedprop.crypto.paillier import (
    PARALLEL_MIN_DECRYPTIONS,
    PARALLEL_MIN_ENCRYPTIONS,
    CiphertextError,
    KeyFormatError,
    KeySizeError,
    PlaintextRangeError,
    PrivateKey,
    PublicKey,
    add_ciphertexts,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    decrypt,
    decrypt_many,
    encrypt,
    encrypt_many,
    generate_keypair,
)
from fedprop.crypto.params import RANDOMNESS_EXPONENT_BITS


@pytest.fixture(scope="session")
def key() -> PrivateKey:
    """One 2048-bit job key for the whole session (generation takes a moment)."""
    return generate_keypair(2048)


@pytest.fixture(scope="session")
def other_key() -> PrivateKey:
    """A second, unrelated 2048-bit key."""
    return generate_keypair(2048)


# --- keys -------------------------------------------------------------------------------


def test_generated_key_has_the_requested_size(key: PrivateKey) -> None:
    assert key.public.bits == key.bits == 2048
    assert key.p < key.q
    assert key.p * key.q == key.public.n
    assert gmpy2.is_prime(key.p) and gmpy2.is_prime(key.q)


@pytest.mark.parametrize("bits", [512, 1024, 2047])
def test_small_keys_are_refused(bits: int) -> None:
    with pytest.raises(KeySizeError, match="too small"):
        generate_keypair(bits)


@pytest.mark.parametrize("bits", [2049, 2560, 4096])
def test_sizes_outside_the_allowed_list_are_refused(bits: int) -> None:
    with pytest.raises(KeySizeError, match="not allowed"):
        generate_keypair(bits)


def test_a_small_public_modulus_is_refused() -> None:
    n = int(gmpy2.next_prime(2**511)) * int(gmpy2.next_prime(2**512))
    with pytest.raises(KeySizeError):
        PublicKey(n)
    with pytest.raises(KeySizeError):
        PublicKey.from_bytes(
            b"FPPK\x01" + len(n.to_bytes(128, "big")).to_bytes(2, "big") + n.to_bytes(128, "big")
        )
    with pytest.raises(KeyFormatError):
        PublicKey(2**2047 + 2)  # even


def test_key_bytes_round_trip(key: PrivateKey) -> None:
    assert PublicKey.from_bytes(key.public.to_bytes()) == key.public
    assert PrivateKey.from_bytes(key.to_bytes()) == key
    assert len(key.public.fingerprint()) == 64
    assert key.public.fingerprint() == PublicKey(key.public.n).fingerprint()


def test_private_key_repr_hides_the_primes(key: PrivateKey) -> None:
    text = repr(key)
    assert str(key.p) not in text and str(key.q) not in text
    assert hex(key.p)[2:20] not in text


def test_malformed_key_bytes_are_refused(key: PrivateKey) -> None:
    data = key.to_bytes()
    for bad in (data[:-1], data + b"\x00", b"XXXX" + data[4:], data[:4] + b"\x02" + data[5:]):
        with pytest.raises(KeyFormatError):
            PrivateKey.from_bytes(bad)
    public = key.public.to_bytes()
    for bad in (public[:-3], public + b"\x01", b"", b"FPPK"):
        with pytest.raises(KeyFormatError):
            PublicKey.from_bytes(bad)


def test_private_key_bytes_with_a_composite_factor_are_refused(key: PrivateKey) -> None:
    composite = key.p * 3  # a 1026-bit odd composite
    size = (composite.bit_length() + 7) // 8
    qsize = (key.q.bit_length() + 7) // 8
    bad = (
        b"FPSK\x01"
        + size.to_bytes(2, "big")
        + composite.to_bytes(size, "big")
        + qsize.to_bytes(2, "big")
        + key.q.to_bytes(qsize, "big")
    )
    with pytest.raises((KeyFormatError, KeySizeError)):
        PrivateKey.from_bytes(bad)


def test_private_key_must_match_its_public_key(key: PrivateKey, other_key: PrivateKey) -> None:
    with pytest.raises(KeyFormatError, match="do not match"):
        PrivateKey(other_key.public, key.p, key.q)


# --- encryption and decryption ----------------------------------------------------------


def test_encrypt_decrypt_round_trip(key: PrivateKey) -> None:
    n = key.public.n
    for m in (0, 1, 2, 12345678901234567890, n // 2, n - 1, secrets.randbelow(n)):
        assert decrypt(key, encrypt(key, m)) == m
        assert decrypt(key, encrypt(key.public, m)) == m


def test_fixed_base_table_gives_the_same_power_as_powmod(key: PrivateKey) -> None:
    table = paillier._fixed_base(key.public.n)
    base = table.rows[0][1]  # h_s itself
    assert table.exponent_bits == RANDOMNESS_EXPONENT_BITS[2048] == 1024
    for alpha in (0, 1, 2**1024 - 1, secrets.randbits(1024), secrets.randbits(1024)):
        assert table.power(alpha) == gmpy2.powmod(base, alpha, table.nsquare)


def test_randomness_is_an_nth_residue_that_encrypts_zero(key: PrivateKey) -> None:
    table = paillier._fixed_base(key.public.n)
    base = int(table.rows[0][1])
    assert base != 1
    assert decrypt(key, base) == 0  # h_s = h^n: a valid encryption of 0
    lam = (key.p - 1) * (key.q - 1)
    assert pow(base, lam, key.public.n**2) == 1  # an n-th residue


def test_a_ciphertext_times_its_message_inverse_is_pure_randomness(key: PrivateKey) -> None:
    n, m = key.public.n, 123456789
    c = encrypt(key.public, m)
    randomness = c * pow(1 + m * n, -1, n * n) % (n * n)
    assert randomness not in (0, 1)
    assert decrypt(key, randomness) == 0


def test_encryptions_of_the_same_plaintext_differ(key: PrivateKey) -> None:
    first, second = encrypt(key, 42), encrypt(key, 42)
    assert first != second
    assert encrypt(key.public, 42) != encrypt(key.public, 42)
    assert decrypt(key, first) == decrypt(key, second) == 42


@pytest.mark.parametrize("bad", [-1, "n", "n+1", "2n"])
def test_plaintexts_out_of_range_are_refused(key: PrivateKey, bad: object) -> None:
    n = key.public.n
    value = {"n": n, "n+1": n + 1, "2n": 2 * n}.get(str(bad), bad)
    with pytest.raises(PlaintextRangeError, match=r"\[0, n\)"):
        encrypt(key, value)  # type: ignore[arg-type]
    with pytest.raises(PlaintextRangeError):
        encrypt_many(key.public, [0, value])  # type: ignore[list-item]


def test_non_integer_plaintexts_are_refused(key: PrivateKey) -> None:
    with pytest.raises(TypeError):
        encrypt(key, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encrypt(key, True)


def test_decrypt_refuses_invalid_ciphertexts(key: PrivateKey) -> None:
    n = key.public.n
    for bad in (0, n * n, n * n + 5, key.p, n):
        with pytest.raises(CiphertextError):
            decrypt_many(key, [bad])


# --- homomorphic sum --------------------------------------------------------------------


def test_add_ciphertexts_adds_the_plaintexts(key: PrivateKey) -> None:
    n = key.public.n
    rng = np.random.default_rng(5)
    lists = [[int(v) for v in rng.integers(0, 2**62, 4)] for _ in range(3)]
    lists[0][0] = n - 1  # wraps modulo n
    encrypted = [encrypt_many(key, values, workers=1) for values in lists]
    total = add_ciphertexts(key.public, encrypted)
    expected = [sum(column) % n for column in zip(*lists, strict=True)]
    assert decrypt_many(key, total, workers=1) == expected


def test_add_ciphertexts_refuses_malformed_input(key: PrivateKey) -> None:
    n = key.public.n
    good = encrypt_many(key, [1, 2], workers=1)
    with pytest.raises(CiphertextError, match="no ciphertext lists"):
        add_ciphertexts(key.public, [])
    with pytest.raises(CiphertextError, match="has 1 ciphertexts"):
        add_ciphertexts(key.public, [good, good[:1]])
    for bad in (0, n * n, n * n + 1, -good[0], key.q, 2 * n):
        with pytest.raises(CiphertextError, match="list 1 item 1"):
            add_ciphertexts(key.public, [good, [good[0], bad]])


# --- serialization ----------------------------------------------------------------------


def test_ciphertext_bytes_round_trip(key: PrivateKey) -> None:
    cts = encrypt_many(key, [0, 1, 2, 3], workers=1)
    blob = ciphertexts_to_bytes(key.public, cts)
    assert len(blob) == 4 + 1 + 32 + 4 + 4 * key.public.ciphertext_bytes
    assert ciphertexts_from_bytes(key.public, blob) == cts
    assert ciphertexts_from_bytes(key.public, ciphertexts_to_bytes(key.public, [])) == []


def test_a_blob_under_another_key_is_refused(key: PrivateKey, other_key: PrivateKey) -> None:
    blob = ciphertexts_to_bytes(other_key.public, encrypt_many(other_key, [7], workers=1))
    with pytest.raises(CiphertextError, match="not this job's key"):
        ciphertexts_from_bytes(key.public, blob)


def test_malformed_blobs_are_refused(key: PrivateKey) -> None:
    blob = ciphertexts_to_bytes(key.public, encrypt_many(key, [1, 2, 3], workers=1))
    width = key.public.ciphertext_bytes
    head = len(blob) - 3 * width
    cases = {
        "truncated": blob[:-1],
        "followed by extra bytes": blob + b"\x00",
        "no header": blob[:10],
        "not a fedprop ciphertext blob": b"XXXX" + blob[4:],
        "unsupported ciphertext blob version": blob[:4] + b"\x07" + blob[5:],
        "out of range": blob[:head] + b"\xff" * width + blob[head + width :],
        "ciphertext 2 is out of range": blob[: head + 2 * width] + bytes(width),
    }
    for message, bad in cases.items():
        with pytest.raises(CiphertextError, match=message):
            ciphertexts_from_bytes(key.public, bad)
    # A count that does not match the body.
    count_at = head - 4
    more = blob[:count_at] + (4).to_bytes(4, "big") + blob[head:]
    with pytest.raises(CiphertextError, match="truncated"):
        ciphertexts_from_bytes(key.public, more)


# --- parallel batches -------------------------------------------------------------------


def test_encrypt_many_in_two_workers_matches_in_process(
    key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    plaintexts = [secrets.randbelow(2**200) for _ in range(PARALLEL_MIN_ENCRYPTIONS + 10)]
    assert len(plaintexts) > PARALLEL_MIN_DECRYPTIONS
    plaintexts[:20] = [5] * 20  # equal plaintexts must still get distinct ciphertexts
    with caplog.at_level(logging.WARNING, logger="fedprop.crypto.paillier"):
        parallel = encrypt_many(key, plaintexts, workers=2)
        decrypted = decrypt_many(key, parallel, workers=2)
    assert "process pool unavailable" not in caplog.text
    assert decrypted == plaintexts
    assert decrypt_many(key, parallel, workers=1) == plaintexts
    assert len(set(parallel)) == len(parallel)  # no randomness reused across workers


# --- end to end -------------------------------------------------------------------------


def test_three_parties_pack_encrypt_sum_decrypt_unpack(key: PrivateKey) -> None:
    spec = PackingSpec.for_job(key.public.bits, parties=3, clip=2.0**20, frac_bits=24)
    rng = np.random.default_rng(11)
    length = 3 * spec.slots_per_plaintext + 7
    vectors = [rng.normal(0.0, 1000.0, length) for _ in range(3)]
    vectors[1][:5] = [2.0**20, -(2.0**20), 0.0, 1e-9, -3.25]
    # Each node encrypts with the job key; the coordinator has only the public key.
    blobs = [ciphertexts_to_bytes(key.public, encrypt_many(key, pack(spec, v))) for v in vectors]
    coordinator = PublicKey.from_bytes(key.public.to_bytes())
    aggregate = ciphertexts_to_bytes(
        coordinator,
        add_ciphertexts(coordinator, [ciphertexts_from_bytes(coordinator, b) for b in blobs]),
    )
    plaintexts = decrypt_many(key, ciphertexts_from_bytes(key.public, aggregate))
    total = unpack_sum(spec, plaintexts, length, 3)
    assert np.max(np.abs(total - np.sum(vectors, axis=0))) <= spec.error_bound
