"""Differential-privacy noise: exact discrete samplers on the operating system's CSPRNG.

Every released query value is an integer (a count, or a sum of clipped values rounded to
a stated grid), and gets integer noise from one of two distributions, sampled exactly with
the algorithms of Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential
Privacy" (NeurIPS 2020, arXiv:2004.00010, the sampling section), on integers and
:class:`~fractions.Fraction` values only:

- the **discrete Laplace** distribution with scale ``t``, ``P[X = x]`` proportional to
  ``exp(-|x| / t)``: adding it to an integer vector of L1
  sensitivity ``D`` is ``D / t``-differentially private (Ghosh, Roughgarden and
  Sundararajan's geometric mechanism, 2009). :func:`laplace_scale` calibrates ``t``;
- the **discrete Gaussian** with variance parameter ``sigma2``, ``P[X = x]`` proportional
  to ``exp(-x**2 / (2 sigma2))``, by rejection from discrete Laplace proposals: adding it
  to an integer vector of L2 sensitivity ``D`` is ``D**2 / (2 sigma2)``-zCDP (the paper's
  concentrated-DP result for the discrete Gaussian).
  :func:`gaussian_sigma2` calibrates ``sigma2`` through the zCDP-to-(epsilon, delta)
  bound of Bun and Steinke (TCC 2016, proposition 1.3).

No floating-point sampling is done anywhere: the textbook ``b * log(u)`` Laplace sampler
on doubles leaks the noiseless value through the low-order bits of its output (Mironov,
"On significance of the least significant bits for differential privacy", CCS 2012),
which is the reason the paper above exists. The only source of randomness is
:func:`secrets.randbelow`, which reads the operating system's CSPRNG on every call (no
user-space state to seed, share or repeat); numpy's generators and the :mod:`random`
module's global functions are never used.

:class:`NoiseSource` is the one object that draws noise. Its only switch,
``testing_only_no_noise``, is a constructor keyword for tests that compare answers with a
pandas reference exactly; nothing in a query spec, a policy or a message can reach it, and
every answer made with it says so. A release draws each value's noise once: nothing here
or in the protocols re-draws noise because a result looks wrong.

The module also gives the quantities answers report next to their values: the scale of
each noise, its variance, and its tail (:func:`discrete_laplace_variance`,
:func:`discrete_laplace_tail`).
"""

from __future__ import annotations

import math
import secrets
from fractions import Fraction
from typing import Final

from fedprop.errors import FedpropError

__all__ = [
    "SCALE_DENOMINATOR",
    "NoiseError",
    "NoiseSource",
    "discrete_laplace_epsilon",
    "discrete_laplace_tail",
    "discrete_laplace_variance",
    "gaussian_sigma2",
    "laplace_scale",
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
]

#: Noise scales are rounded up to a multiple of ``1 / SCALE_DENOMINATOR``: the sampler's
#: rational arithmetic stays on small integers, and rounding up only adds noise (the
#: mechanism's epsilon can only go down, by at most a relative 2**-20 / scale).
SCALE_DENOMINATOR: Final = 2**20

#: Largest noise scale accepted (a count scale of 2**40 hides any count a bank has; larger
#: only means a sensitivity or epsilon that is wrong).
_MAX_SCALE: Final = Fraction(2**40)


class NoiseError(FedpropError):
    """A noise parameter that is not valid (non-positive, not finite, out of range)."""


# --- exact samplers (Canonne, Kamath and Steinke 2020, sampling section) -------------------


def _uniform(n: int) -> int:
    """Uniform on ``{0, ..., n-1}`` from the OS CSPRNG."""
    return secrets.randbelow(n)


def _bernoulli(p: Fraction) -> bool:
    """True with probability ``p`` (a fraction in [0, 1])."""
    return _uniform(p.denominator) < p.numerator


def _bernoulli_exp_unit(gamma: Fraction) -> bool:
    """True with probability ``exp(-gamma)``, for ``0 <= gamma <= 1`` (von Neumann's
    method, as the paper gives it: ``K`` grows while ``Bernoulli(gamma / K)`` succeeds)."""
    k = 1
    while _bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(gamma: Fraction) -> bool:
    """True with probability ``exp(-gamma)``, for ``gamma >= 0``: ``floor(gamma)`` draws of
    ``exp(-1)`` and one of the fractional part, all of which must succeed."""
    while gamma > 1:
        if not _bernoulli_exp_unit(Fraction(1)):
            return False
        gamma -= 1
    return _bernoulli_exp_unit(gamma)


def _geometric_exp_slow(gamma: Fraction) -> int:
    """``P[K = k]`` proportional to ``exp(-gamma k)``, ``k >= 0``, by repeated trials."""
    k = 0
    while _bernoulli_exp(gamma):
        k += 1
    return k


def _geometric_exp_fast(gamma: Fraction) -> int:
    """``P[K = k]`` proportional to ``exp(-gamma k)``, ``k >= 0``, for rational ``gamma = s/t``
    (the paper's geometric sampler): the remainder modulo ``t`` and the quotient apart."""
    if gamma == 0:
        return 0
    s, t = gamma.numerator, gamma.denominator
    while True:
        u = _uniform(t)
        if _bernoulli_exp(Fraction(u, t)):
            break
    v = _geometric_exp_slow(Fraction(1))
    return (v * t + u) // s


def sample_discrete_laplace(scale: Fraction) -> int:
    """One draw of the discrete Laplace distribution: ``P[X = x]`` proportional to
    ``exp(-|x| / scale)``: a sign and a geometric magnitude. ``scale`` is a positive
    fraction."""
    scale = _checked_scale(scale)
    inverse = 1 / scale
    while True:
        negative = _bernoulli(Fraction(1, 2))
        magnitude = _geometric_exp_fast(inverse)
        if negative and magnitude == 0:
            continue  # zero would otherwise be drawn twice as often as it should
        return -magnitude if negative else magnitude


def sample_discrete_gaussian(sigma2: Fraction) -> int:
    """One draw of the discrete Gaussian: ``P[X = x]`` proportional to
    ``exp(-x**2 / (2 sigma2))``: discrete Laplace proposals of scale
    ``floor(sqrt(sigma2)) + 1``, each kept with probability
    ``exp(-(|x| - sigma2/t)**2 / (2 sigma2))``."""
    sigma2 = _checked_scale(sigma2)
    t = math.isqrt(sigma2.numerator // sigma2.denominator) + 1  # floor(sqrt(sigma2)) + 1
    scale = Fraction(t)
    while True:
        candidate = sample_discrete_laplace(scale)
        bias = (abs(candidate) - sigma2 / t) ** 2 / (2 * sigma2)
        if _bernoulli_exp(bias):
            return candidate


def _checked_scale(value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, Fraction | int):
        raise NoiseError(f"a noise scale must be an exact Fraction, got {value!r}")
    scale = Fraction(value)
    if not 0 < scale <= _MAX_SCALE:
        raise NoiseError(f"noise scale must be in (0, 2**40], got {float(scale):g}")
    return scale


# --- calibration ---------------------------------------------------------------------------


def _positive_finite(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NoiseError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise NoiseError(f"{what} must be a finite number above 0, got {value!r}")
    return number


def _sensitivity(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NoiseError(f"sensitivity must be a positive integer, got {value!r}")
    return value


def _round_up(value: Fraction) -> Fraction:
    return Fraction(math.ceil(value * SCALE_DENOMINATOR), SCALE_DENOMINATOR)


def laplace_scale(sensitivity: int, epsilon: float) -> Fraction:
    """The discrete Laplace scale ``t >= sensitivity / epsilon`` (exactly, rounded up to a
    multiple of ``1 / SCALE_DENOMINATOR``): adding that noise to an integer vector of L1
    sensitivity ``sensitivity`` is ``epsilon``-differentially private."""
    exact = Fraction(_sensitivity(sensitivity)) / Fraction(_positive_finite(epsilon, "epsilon"))
    return _checked_scale(_round_up(exact))


def discrete_laplace_epsilon(scale: Fraction, sensitivity: int) -> float:
    """The epsilon the discrete Laplace mechanism of ``scale`` gives at ``sensitivity``."""
    return float(Fraction(_sensitivity(sensitivity)) / _checked_scale(scale))


def discrete_laplace_variance(scale: Fraction) -> float:
    """Variance of the discrete Laplace distribution: ``2 q / (1 - q)**2``, ``q = e^(-1/t)``."""
    q = math.exp(-1 / float(_checked_scale(scale)))
    return 2 * q / (1 - q) ** 2


def discrete_laplace_tail(scale: Fraction, m: int) -> float:
    """``P[X >= m]`` for the discrete Laplace of ``scale`` and an integer ``m >= 1``:
    ``e^(-m/t) / (1 + e^(-1/t))``."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise NoiseError(f"tail threshold must be a positive integer, got {m!r}")
    t = float(_checked_scale(scale))
    return math.exp(-m / t) / (1 + math.exp(-1 / t))


def gaussian_sigma2(sensitivity: int, epsilon: float, delta: float) -> Fraction:
    """A discrete Gaussian variance parameter giving ``(epsilon, delta)``-DP at L2
    ``sensitivity``: ``rho = (sqrt(L + epsilon) - sqrt(L))**2`` with ``L = ln(1/delta)``
    (so that ``rho + 2 sqrt(rho L) = epsilon``), then ``sigma2 = sensitivity**2 / (2 rho)``,
    rounded up. Valid, not tight: the paper's direct (epsilon, delta) bound for the
    discrete Gaussian allows somewhat less noise."""
    eps = _positive_finite(epsilon, "epsilon")
    dlt = _positive_finite(delta, "delta")
    if dlt >= 1:
        raise NoiseError(f"delta must be below 1, got {delta!r}")
    log_term = math.log(1 / dlt)
    rho = (math.sqrt(log_term + eps) - math.sqrt(log_term)) ** 2
    # a slightly smaller rho than computed (relative 1e-12) absorbs the float error above
    sigma2 = Fraction(_sensitivity(sensitivity) ** 2) / (2 * Fraction(rho * (1 - 1e-12)))
    return _checked_scale(_round_up(sigma2))


# --- the noise source ----------------------------------------------------------------------


class NoiseSource:
    """Draws the noise of a release from the OS CSPRNG, each value once.

    ``testing_only_no_noise=True`` makes every draw zero. It exists for tests that check
    answers against an exact reference; it is a keyword of this constructor only (no query
    spec, policy or message can set it), and :attr:`enabled` is reported in every answer
    made with it.
    """

    def __init__(self, *, testing_only_no_noise: bool = False) -> None:
        if not isinstance(testing_only_no_noise, bool):
            raise TypeError("testing_only_no_noise must be True or False")
        self._enabled = not testing_only_no_noise

    @property
    def enabled(self) -> bool:
        """False only for the test-only noiseless source."""
        return self._enabled

    def discrete_laplace(self, scale: Fraction, size: int) -> list[int]:
        """``size`` independent discrete Laplace draws of ``scale``."""
        _checked_scale(scale)
        if not self._enabled:
            return [0] * _size(size)
        return [sample_discrete_laplace(scale) for _ in range(_size(size))]

    def discrete_gaussian(self, sigma2: Fraction, size: int) -> list[int]:
        """``size`` independent discrete Gaussian draws of variance parameter ``sigma2``."""
        _checked_scale(sigma2)
        if not self._enabled:
            return [0] * _size(size)
        return [sample_discrete_gaussian(sigma2) for _ in range(_size(size))]

    def __repr__(self) -> str:
        return "NoiseSource()" if self._enabled else "NoiseSource(testing_only_no_noise=True)"


def _size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise NoiseError(f"size must be a non-negative integer, got {size!r}")
    return size
