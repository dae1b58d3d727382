"""The packing codec: exact sums within the stated error, no overflow, clear refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprop.crypto.packing import PackingError, PackingSpec, clipped_fraction, pack, unpack_sum
from fedprop.crypto.params import DEFAULT_FRAC_BITS, SLOT_GUARD_BITS


def _plain_sum(packed: list[list[int]]) -> list[int]:
    """What a homomorphic sum does to the plaintexts: element-wise integer addition."""
    return [sum(column) for column in zip(*packed, strict=True)]


def _exact_clipped_sum(spec: PackingSpec, vectors: list[np.ndarray]) -> np.ndarray:
    clipped = [np.clip(v, -spec.clip, spec.clip) for v in vectors]
    return np.array([math.fsum(column) for column in zip(*clipped, strict=True)])


def _roundtrip(spec: PackingSpec, vectors: list[np.ndarray]) -> np.ndarray:
    total = _plain_sum([pack(spec, v) for v in vectors])
    return unpack_sum(spec, total, len(vectors[0]), len(vectors))


# --- layout -----------------------------------------------------------------------------


def test_slot_layout_of_a_realistic_spec() -> None:
    spec = PackingSpec.for_job(2048, parties=4, clip=2.0**20, frac_bits=24)
    assert spec.offset == 2**44
    # 4 parties * 2 * 2**44 = 2**47 needs 48 bits, plus the guard bit.
    assert spec.slot_bits == 48 + SLOT_GUARD_BITS
    assert spec.slots_per_plaintext == 2047 // spec.slot_bits == 41
    assert spec.error_bound == 4 * 2.0**-25
    assert spec.ciphertexts_for(0) == 0
    assert spec.ciphertexts_for(41) == 1
    assert spec.ciphertexts_for(42) == 2


def test_for_job_defaults_and_validation() -> None:
    spec = PackingSpec.for_job(2048, parties=3, clip=5.0)
    assert spec.frac_bits == DEFAULT_FRAC_BITS
    assert spec.max_summands == 3
    with pytest.raises(PackingError, match="too small"):
        PackingSpec.for_job(1024, parties=3, clip=5.0)
    with pytest.raises(PackingError, match="slot needs"):
        PackingSpec.for_job(2048, parties=2**1100, clip=2.0**1000, frac_bits=20)
    with pytest.raises(PackingError, match="overflows"):
        PackingSpec.for_job(2048, parties=3, clip=1e300, frac_bits=100)
    for clip in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(PackingError, match="clip"):
            PackingSpec.for_job(2048, parties=3, clip=clip)
    with pytest.raises(PackingError, match="frac_bits"):
        PackingSpec.for_job(2048, parties=3, clip=1.0, frac_bits=-1)
    with pytest.raises(PackingError, match="max_summands"):
        PackingSpec.for_job(2048, parties=0, clip=1.0)


def test_packed_plaintexts_stay_below_the_modulus_bound() -> None:
    spec = PackingSpec.for_job(2048, parties=5, clip=100.0, frac_bits=20)
    rng = np.random.default_rng(3)
    values = rng.uniform(-100, 100, 1000)
    packed = pack(spec, values)
    assert len(packed) == spec.ciphertexts_for(1000)
    summed = _plain_sum([packed] * spec.max_summands)
    assert all(0 <= v < 2 ** (spec.key_bits - 1) for v in summed)


# --- exactness and error ----------------------------------------------------------------


@pytest.mark.parametrize("summands", [1, 2, 3, 5, 8])
def test_sum_of_random_vectors_is_within_the_stated_bound(summands: int) -> None:
    spec = PackingSpec.for_job(2048, parties=8, clip=8.0, frac_bits=24)
    rng = np.random.default_rng(100 + summands)
    vectors = [rng.normal(0.0, 3.0, 2000) for _ in range(summands)]
    decoded = _roundtrip(spec, vectors)
    error = np.max(np.abs(decoded - _exact_clipped_sum(spec, vectors)))
    bound = summands * 2.0 ** -(spec.frac_bits + 1)
    assert error <= bound
    assert error <= spec.error_bound
    # The bound is tight, not vacuous: rounding errors come close to it.
    assert error > bound / 100


def test_negative_values_round_trip() -> None:
    spec = PackingSpec.for_job(2048, parties=3, clip=50.0, frac_bits=16)
    rng = np.random.default_rng(9)
    vectors = [-rng.uniform(0.0, 50.0, 300) for _ in range(3)]
    decoded = _roundtrip(spec, vectors)
    assert np.all(decoded < 0)
    assert np.max(np.abs(decoded - _exact_clipped_sum(spec, vectors))) <= spec.error_bound


def test_values_exactly_representable_are_exact() -> None:
    spec = PackingSpec.for_job(2048, parties=4, clip=2.0**20, frac_bits=24)
    vectors = [np.array([1.0, -2.5, 0.0, 1024.125, -(2.0**-24)]) * (k + 1) for k in range(4)]
    decoded = _roundtrip(spec, vectors)
    np.testing.assert_array_equal(decoded, np.sum(vectors, axis=0))


@pytest.mark.parametrize("clip", [1.0, 0.3, 2.0**20, 2.0**40])
def test_extremes_summed_max_summands_times_do_not_overflow(clip: float) -> None:
    spec = PackingSpec.for_job(2048, parties=6, clip=clip, frac_bits=20)
    length = 3 * spec.slots_per_plaintext + 1
    top = np.full(length, clip)
    alternating = np.where(np.arange(length) % 2 == 0, clip, -clip)
    for vector in (top, -top, alternating):
        decoded = _roundtrip(spec, [vector] * spec.max_summands)
        encoded = round(clip * 2**spec.frac_bits)  # what one clipped extreme encodes to
        expected = np.sign(vector) * (spec.max_summands * encoded / 2**spec.frac_bits)
        np.testing.assert_array_equal(decoded, expected)
    # One more summand than allowed would be the first to risk a carry: it is refused.
    with pytest.raises(PackingError, match="exceeds"):
        unpack_sum(spec, _plain_sum([pack(spec, top)] * 7), length, 7)


def test_randomized_specs_round_trip() -> None:
    rng = np.random.default_rng(2024)
    for _ in range(40):
        key_bits = int(rng.choice([2048, 3072]))
        parties = int(rng.integers(1, 9))
        clip = float(rng.choice([0.5, 3.0, 1000.0, 2.0**20, 2.0**40]))
        frac_bits = int(rng.choice([0, 8, 16, 24, 30]))
        spec = PackingSpec.for_job(key_bits, parties, clip, frac_bits)
        summands = int(rng.integers(1, parties + 1))
        length = int(rng.integers(0, 200))
        vectors = [rng.uniform(-1.5 * clip, 1.5 * clip, length) for _ in range(summands)]
        decoded = _roundtrip(spec, vectors) if length else unpack_sum(spec, [], 0, summands)
        assert decoded.shape == (length,)
        if length:
            exact = _exact_clipped_sum(spec, vectors)
            # fixed-point error plus float64 rounding of the result (half an ulp).
            slack = summands * 2.0 ** -(frac_bits + 1) + np.spacing(np.abs(exact)) / 2
            assert np.all(np.abs(decoded - exact) <= slack)


def test_large_offsets_use_exact_integers() -> None:
    # offset 2**70: beyond int64, so pack and unpack take the Python-integer path.
    spec = PackingSpec.for_job(2048, parties=3, clip=2.0**40, frac_bits=30)
    assert spec.offset > 2**63
    vectors = [np.array([2.0**40, -(2.0**40), 1.5, -(2.0**-30), 0.0])] * 3
    np.testing.assert_array_equal(_roundtrip(spec, vectors), np.sum(vectors, axis=0))


# --- clipping ---------------------------------------------------------------------------


def test_values_beyond_clip_are_clipped_and_reported() -> None:
    spec = PackingSpec.for_job(2048, parties=2, clip=1.0, frac_bits=10)
    values = np.array([0.5, 3.0, -7.0, 1.0, -1.0])
    assert clipped_fraction(spec, values) == pytest.approx(2 / 5)
    assert clipped_fraction(spec, np.array([])) == 0.0
    decoded = unpack_sum(spec, pack(spec, values), 5, 1)
    np.testing.assert_array_equal(decoded, [0.5, 1.0, -1.0, 1.0, -1.0])


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    spec = PackingSpec.for_job(2048, parties=2, clip=1.0)
    with pytest.raises(PackingError, match="NaN or infinite"):
        pack(spec, np.array([0.0, bad]))
    with pytest.raises(PackingError, match="NaN or infinite"):
        clipped_fraction(spec, np.array([bad]))


def test_shapes_and_types_are_checked() -> None:
    spec = PackingSpec.for_job(2048, parties=2, clip=1.0)
    with pytest.raises(PackingError, match="1-D"):
        pack(spec, np.zeros((2, 3)))
    with pytest.raises(PackingError, match="not numbers"):
        pack(spec, np.array(["a", "b"]))


def test_unpack_refuses_wrong_counts_and_lengths() -> None:
    spec = PackingSpec.for_job(2048, parties=3, clip=1.0, frac_bits=16)
    length = spec.slots_per_plaintext + 10
    packed = pack(spec, np.linspace(-1, 1, length))
    assert len(packed) == 2
    with pytest.raises(PackingError, match="exceeds this packing's limit"):
        unpack_sum(spec, packed, length, 4)
    with pytest.raises(PackingError, match="at least 1"):
        unpack_sum(spec, packed, length, 0)
    with pytest.raises(PackingError, match="plaintexts given"):
        unpack_sum(spec, packed[:-1], length, 1)
    with pytest.raises(PackingError, match="plaintexts given"):
        unpack_sum(spec, packed, length + spec.slots_per_plaintext, 1)
    # Fewer values than packed: the last plaintext has data past the declared end.
    with pytest.raises(PackingError, match="beyond the vector's end"):
        unpack_sum(spec, packed, length - 1, 1)
    with pytest.raises(PackingError, match="larger than any packed sum"):
        unpack_sum(spec, [packed[0], 1 << (spec.key_bits - 1)], length, 1)
    with pytest.raises(PackingError, match="at least 0"):
        unpack_sum(spec, [-1, packed[1]], length, 1)


def test_a_sum_claimed_for_too_few_summands_is_refused() -> None:
    spec = PackingSpec.for_job(2048, parties=3, clip=1.0, frac_bits=16)
    top = np.ones(10)
    total = _plain_sum([pack(spec, top)] * 3)
    with pytest.raises(PackingError, match="wrong summand count"):
        unpack_sum(spec, total, 10, 1)
