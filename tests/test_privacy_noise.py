"""DP noise: exact discrete samplers have the distribution they claim, draw only from the OS
CSPRNG, and calibrate scales that give the stated epsilon.

Statistical checks use a fixed number of draws and bounds many standard errors wide, so
they cannot fail by chance in practice (each bound is at least 6 standard errors).
"""

from __future__ import annotations

import math
import random
import secrets
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from fedprop.privacy import noise as noise_module
from fedprop.privacy.noise import (
    SCALE_DENOMINATOR,
    NoiseError,
    NoiseSource,
    discrete_laplace_epsilon,
    discrete_laplace_tail,
    discrete_laplace_variance,
    gaussian_sigma2,
    laplace_scale,
    sample_discrete_gaussian,
    sample_discrete_laplace,
)

DRAWS = 20_000


def laplace_pmf(x: int, scale: float) -> float:
    q = math.exp(-1 / scale)
    return (1 - q) / (1 + q) * q ** abs(x)


def gaussian_pmf(x: int, sigma2: float) -> float:
    total = sum(math.exp(-(y**2) / (2 * sigma2)) for y in range(-400, 401))
    return math.exp(-(x**2) / (2 * sigma2)) / total


def within(observed: float, expected: float, n: int) -> bool:
    """``observed`` frequency within 6 standard errors (plus a small floor) of ``expected``."""
    return abs(observed - expected) <= 6 * math.sqrt(expected * (1 - expected) / n) + 1e-3


# --- distributions -------------------------------------------------------------------------


def test_discrete_laplace_has_the_stated_distribution() -> None:
    scale = Fraction(2)
    draws = NoiseSource().discrete_laplace(scale, DRAWS)
    counts = Counter(draws)
    for x in range(-4, 5):
        assert within(counts[x] / DRAWS, laplace_pmf(x, 2.0), DRAWS), x
    variance = discrete_laplace_variance(scale)
    assert abs(np.mean(draws)) < 6 * math.sqrt(variance / DRAWS)
    assert abs(np.var(draws) / variance - 1) < 0.15


def test_the_likelihood_ratio_of_neighbouring_counts_is_e_to_the_epsilon() -> None:
    """What makes the mechanism epsilon-DP: P[x] / P[x + 1] = e^(1/t) for x >= 0."""
    scale = laplace_scale(1, 0.5)
    draws = NoiseSource().discrete_laplace(scale, DRAWS)
    counts = Counter(draws)
    ratio = counts[0] / counts[1]
    assert abs(math.log(ratio) - 0.5) < 0.16  # 6 standard errors of the log ratio


def test_large_scales_are_sampled_exactly_and_fast() -> None:
    scale = laplace_scale(2000, 0.01)  # a clipped sum's noise: 200,000 units
    draws = NoiseSource().discrete_laplace(scale, 4000)
    assert abs(np.var(draws) / discrete_laplace_variance(scale) - 1) < 0.3
    assert all(isinstance(d, int) for d in draws)


def test_discrete_gaussian_has_the_stated_distribution() -> None:
    sigma2 = Fraction(16)
    draws = NoiseSource().discrete_gaussian(sigma2, DRAWS)
    counts = Counter(draws)
    for x in (-6, -2, 0, 1, 5):
        assert within(counts[x] / DRAWS, gaussian_pmf(x, 16.0), DRAWS), x
    assert abs(np.mean(draws)) < 6 * math.sqrt(16 / DRAWS)
    assert abs(np.var(draws) / 16 - 1) < 0.1


def test_single_draws_are_integers_on_both_sides_of_zero() -> None:
    draws = [sample_discrete_laplace(Fraction(3)) for _ in range(500)]
    draws += [sample_discrete_gaussian(Fraction(9)) for _ in range(500)]
    assert all(isinstance(d, int) for d in draws)
    assert min(draws) < 0 < max(draws)


# --- the randomness source -----------------------------------------------------------------


def test_every_draw_reads_the_os_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = secrets.randbelow

    def counting(n: int) -> int:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(noise_module.secrets, "randbelow", counting)
    NoiseSource().discrete_laplace(Fraction(2), 10)
    assert len(calls) >= 20  # a sign and a magnitude per draw, at least
    before = len(calls)
    NoiseSource().discrete_gaussian(Fraction(4), 10)
    assert len(calls) > before


def test_nothing_but_secrets_randbelow_is_a_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the CSPRNG by a seeded generator: the draws become exactly reproducible, so
    no other randomness (numpy, the random module, time) enters them."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a non-cryptographic random source was used")

    for name in ("random", "randrange", "randint", "getrandbits", "choice", "gauss"):
        monkeypatch.setattr(random, name, forbidden)
    monkeypatch.setattr(np.random, "default_rng", forbidden)
    monkeypatch.setattr(np.random, "random", forbidden)
    monkeypatch.setattr(np.random, "laplace", forbidden)

    def run(seed: int) -> list[int]:
        generator = random.Random(seed)
        monkeypatch.setattr(noise_module.secrets, "randbelow", generator.randrange)
        source = NoiseSource()
        return source.discrete_laplace(Fraction(5), 50) + source.discrete_gaussian(Fraction(7), 50)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_noise_off_is_a_constructor_keyword_only() -> None:
    off = NoiseSource(testing_only_no_noise=True)
    assert not off.enabled
    assert off.discrete_laplace(Fraction(2), 5) == [0] * 5
    assert off.discrete_gaussian(Fraction(2), 3) == [0] * 3
    assert NoiseSource().enabled
    with pytest.raises(TypeError):
        NoiseSource(False)  # type: ignore[misc]
    with pytest.raises(TypeError):
        NoiseSource(testing_only_no_noise="yes")  # type: ignore[arg-type]
    assert "testing_only_no_noise=True" in repr(off)


# --- calibration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sensitivity", "epsilon"), [(1, 1.0), (1, 0.5), (1, 0.1), (20, 1 / 3), (7, 0.3)]
)
def test_laplace_scale_gives_at_most_the_stated_epsilon(sensitivity: int, epsilon: float) -> None:
    scale = laplace_scale(sensitivity, epsilon)
    assert scale >= Fraction(sensitivity) / Fraction(epsilon)
    assert scale - Fraction(sensitivity) / Fraction(epsilon) < Fraction(1, SCALE_DENOMINATOR)
    assert (scale * SCALE_DENOMINATOR).denominator == 1
    assert discrete_laplace_epsilon(scale, sensitivity) <= epsilon


def test_variance_and_tail_match_the_distribution() -> None:
    scale = Fraction(3)
    pmf = {x: laplace_pmf(x, 3.0) for x in range(-300, 301)}
    assert math.isclose(sum(x * x * p for x, p in pmf.items()), discrete_laplace_variance(scale))
    for m in (1, 4, 10):
        assert math.isclose(
            sum(p for x, p in pmf.items() if x >= m), discrete_laplace_tail(scale, m)
        )


def test_gaussian_calibration_meets_the_zcdp_conversion() -> None:
    sigma2 = gaussian_sigma2(1, 1.0, 1e-6)
    rho = 1 / (2 * float(sigma2))
    assert rho + 2 * math.sqrt(rho * math.log(1 / 1e-6)) <= 1.0
    assert gaussian_sigma2(2, 1.0, 1e-6) >= 4 * sigma2 - 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: laplace_scale(0, 1.0),
        lambda: laplace_scale(1, 0.0),
        lambda: laplace_scale(1, math.nan),
        lambda: laplace_scale(1, math.inf),
        lambda: laplace_scale(True, 1.0),
        lambda: sample_discrete_laplace(Fraction(0)),
        lambda: sample_discrete_laplace(2.0),  # type: ignore[arg-type]
        lambda: sample_discrete_gaussian(Fraction(-1)),
        lambda: gaussian_sigma2(1, 1.0, 0.0),
        lambda: gaussian_sigma2(1, 1.0, 1.0),
        lambda: discrete_laplace_tail(Fraction(2), 0),
        lambda: NoiseSource().discrete_laplace(Fraction(2), -1),
    ],
)
def test_bad_parameters_are_refused(call: object) -> None:
    with pytest.raises(NoiseError):
        call()  # type: ignore[operator]
