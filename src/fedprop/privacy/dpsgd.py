"""Record-level differentially private training inside a node (DP-SGD with Opacus).

With a handful of banks, noise that hides a whole party would drown the model; DP-SGD
instead hides any one customer of a node. When a job spec has a ``[dp]`` table
(:class:`~fedprop.spec.DpTrainConfig`), each node trains locally with
:func:`train_epochs_dp` instead of :func:`~fedprop.models.train.train_epochs`:

- every step takes a **Poisson sample** of the node's training rows, each row in
  independently with probability ``q = batch-size / rows`` (at most 1), so a step's batch
  size varies around ``batch-size``; an epoch is ``ceil(rows / batch-size)`` steps;
- Opacus (``PrivacyEngine.make_private``) computes each sampled row's own gradient, and its
  ``DPOptimizer`` **clips** each to L2 norm ``C = max-grad-norm`` and sums them;
- **Gaussian noise** of standard deviation ``sigma * C`` (``sigma = noise-multiplier``) is
  added to the sum, which is divided by the expected batch size ``q * rows``; the wrapped
  optimizer (SGD with momentum or Adam, as in plain training) then only reads that noised
  gradient.

Adding or removing one row changes a step's clipped sum by at most ``C`` in L2 norm, so
each step is a Poisson-subsampled Gaussian mechanism with noise multiplier ``sigma`` and
sampling probability ``q``, and a node's whole job (``rounds * local-epochs`` epochs) is
that mechanism composed ``steps`` times, adaptively (each round starts from a model that
depended on earlier rounds). :func:`dp_training_spend` states that as a ledger
:class:`~fedprop.privacy.ledger.Spend` *before* any training: its mechanism
(:attr:`~fedprop.privacy.ledger.MechanismKind.SUBSAMPLED_GAUSSIAN`) for the ledger's PLD
composition, and its epsilon, the PLD epsilon of that mechanism alone at the job's delta
(``dp-accounting``, as the ledger computes it), for basic composition. A node whose rows are
too few for the stated noise to reach the job's target epsilon refuses the job there.

**Randomness.** Opacus' own answer to "the noise must be unpredictable" is
``PrivacyEngine(secure_mode=True)``, which needs the ``torchcsprng`` package. It is not
installable here: the package index has no distribution of it, and its last release on
PyPI (March 2021) was built for torch 1.8.1 (pytorch/csprng issue 130), while this project
pins torch 2.13. Without it Opacus would draw both the Poisson samples and the noise from
torch's Mersenne Twister, which anyone who knows or guesses the seed replays. So this
module gives Opacus its randomness itself, from the operating system's CSPRNG
(:func:`os.urandom`, as :mod:`fedprop.privacy.noise` does); nothing the guarantee rests on
comes from torch's generators:

- the Poisson sample of each step (:class:`_PoissonBatches`, given to Opacus as the data
  loader's sampler): row ``i`` is in if a fresh 32-bit uniform is below
  ``floor(q * 2**32)``, a probability of at most ``q`` (a smaller sampling probability only
  strengthens the guarantee accounted for ``q``);
- the noise (:func:`_csprng_normal`, in a ``DPOptimizer`` whose ``add_noise`` is replaced):
  Box-Muller on 53-bit uniforms, and, as Opacus' secure mode does, each value the sum of
  four such draws divided by two (same variance), the defence of Holohan and Braghin
  (arXiv:2107.10138) against attacks on the floating-point representation of Gaussian
  samples. The guarantee is that of the Gaussian mechanism on real numbers, up to
  float32 rounding, as with any DP-SGD; exact discrete sampling
  (:mod:`fedprop.privacy.noise`) is far too slow for the millions of values a job draws.

A DP run therefore cannot be replayed, unlike plain training (``seed`` is accepted for the
same call shape as :func:`~fedprop.models.train.train_epochs` and unused).

**What the guarantee covers.** The model update a node contributes, and everything derived
from it, for the node's training rows. Not covered: the training statistics a node
contributes for feature scaling (summed under encryption, never released, but the scaling
every node then applies depends on them, as does ``class-weighting = "balanced"``), the
number of training rows (in the FedAvg weights; here also in ``q``), and the evaluation
histograms of the test rows. The models: the project's logistic regression and MLP
(``Linear`` and ``ReLU`` layers) are ones Opacus computes per-row gradients for; any other
model is refused.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from fedprop.errors import FedpropError, SpecError
from fedprop.models.train import TORCH_THREADS
from fedprop.models.train import _optimizer as plain_optimizer  # the same optimizer settings
from fedprop.privacy.ledger import Mechanism, MechanismKind, Spend, mechanisms_epsilon
from fedprop.spec import DP_OPTIMIZERS, DpTrainConfig, JobSpec, TrainConfig

__all__ = [
    "SPEND_KIND",
    "DpTrainReport",
    "DpTrainingError",
    "dp_training_spend",
    "noise_multiplier_for",
    "sample_rate",
    "steps_per_epoch",
    "train_epochs_dp",
    "training_epsilon",
    "training_mechanism",
]

#: The ``what`` of a DP training job's ledger spend.
SPEND_KIND: Final = "train"

#: Bits of each uniform Poisson sampling compares with ``floor(q * 2**_SAMPLING_BITS)``.
_SAMPLING_BITS: Final = 32
#: Bits of each uniform in (0, 1] or [0, 1) that Box-Muller turns into Gaussians.
_UNIFORM_BITS: Final = 53
#: Gaussian draws summed (and divided by their square root) for each noise value.
_NOISE_DRAWS: Final = 4
#: Relative precision of :func:`noise_multiplier_for`'s bisection.
_CALIBRATION_TOLERANCE: Final = 1e-3
#: Largest noise multiplier :func:`noise_multiplier_for` searches.
_MAX_NOISE_MULTIPLIER: Final = 1e4

#: Warnings of Opacus that do not apply here: its secure RNG is replaced by the OS CSPRNG
#: (see the module docstring), and inputs never need gradients.
_SILENCED: Final = ("Secure RNG turned off", "Full backward hook is firing")


class DpTrainingError(FedpropError):
    """DP training cannot run: a model Opacus does not support, or no accountant."""


# --- the job's mechanism and spend --------------------------------------------------------


def _dp(config: TrainConfig) -> DpTrainConfig:
    if config.dp is None:
        raise SpecError("the job does not ask for DP training (no [dp] table)")
    return config.dp


def sample_rate(batch_size: int, rows: int) -> float:
    """Poisson sampling probability of each row in each step: ``batch_size / rows``, at most 1."""
    if rows < 1 or batch_size < 1:
        raise ValueError("DP training needs at least one row and a positive batch size")
    return min(1.0, batch_size / rows)


def steps_per_epoch(batch_size: int, rows: int) -> int:
    """Steps in one epoch: ``ceil(rows / batch_size)``, as in plain training."""
    if rows < 1 or batch_size < 1:
        raise ValueError("DP training needs at least one row and a positive batch size")
    return math.ceil(rows / batch_size)


def training_mechanism(config: TrainConfig, rows: int, epochs: int) -> Mechanism:
    """The ledger mechanism of ``epochs`` epochs of DP-SGD over ``rows`` rows."""
    dp = _dp(config)
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    return Mechanism(
        MechanismKind.SUBSAMPLED_GAUSSIAN,
        dp.noise_multiplier,
        count=epochs * steps_per_epoch(config.batch_size, rows),
        sampling=sample_rate(config.batch_size, rows),
    )


def _epsilon(mechanism: Mechanism, delta: float) -> float:
    epsilon = mechanisms_epsilon((mechanism,), delta)
    if epsilon is None:
        raise DpTrainingError(
            "the epsilon of DP training cannot be computed: dp-accounting is needed"
        )
    return epsilon


def training_epsilon(spec: JobSpec, rows: int) -> float:
    """The epsilon at the spec's ``[dp] delta`` of the whole job at a node with ``rows``
    training rows (every round and local epoch), as the ledger computes it."""
    dp = _dp(spec.train)
    epochs = spec.train.rounds * spec.train.local_epochs
    return _epsilon(training_mechanism(spec.train, rows, epochs), dp.delta)


def dp_training_spend(
    spec: JobSpec, coordinator: str, rows: int, *, query_id: str | None = None
) -> Spend:
    """What DP training job ``spec`` takes from ``coordinator``'s budget at a node with
    ``rows`` training rows: the whole job (every round and local epoch), computed before
    any training.

    The spend's mechanism is the job's Poisson-subsampled Gaussian (``count`` = all its
    steps), its epsilon the PLD epsilon of that mechanism at the spec's delta (a valid
    bound for basic composition), its ``extra_delta`` 0, its id the job id (or
    ``query_id``), its digest the SHA-256 of the spec text. :class:`SpecError` if that
    epsilon is above the spec's target ``[dp] epsilon``: the node refuses the job. The
    message names only the spec's values, not this node's row count.
    """
    dp = _dp(spec.train)
    cfg = spec.train
    mechanism = training_mechanism(cfg, rows, cfg.rounds * cfg.local_epochs)
    epsilon = _epsilon(mechanism, dp.delta)
    if epsilon > dp.epsilon:
        raise SpecError(
            f"[dp] epsilon: noise-multiplier {dp.noise_multiplier:g} with batch-size "
            f"{cfg.batch_size}, {cfg.rounds} round(s) of {cfg.local_epochs} local epoch(s) "
            f"would spend more than epsilon {dp.epsilon:g} at delta {dp.delta:g} of this "
            "node's rows; raise noise-multiplier, or lower batch-size, rounds or local-epochs"
        )
    return Spend(
        coordinator=coordinator,
        query_id=spec.id if query_id is None else query_id,
        epsilon=epsilon,
        delta=dp.delta,
        mechanisms=(mechanism,),
        extra_delta=0.0,
        what=SPEND_KIND,
        digest=hashlib.sha256(spec.text.encode("utf-8")).hexdigest(),
    )


def noise_multiplier_for(epsilon: float, delta: float, sampling: float, steps: int) -> float:
    """The smallest noise multiplier (to a relative 1e-3, rounded up) whose ``steps``
    Poisson-subsampled Gaussian steps at ``sampling`` spend at most ``epsilon`` at
    ``delta``, as the ledger computes it. For choosing ``[dp] noise-multiplier``."""
    if not (epsilon > 0 and 0 < delta < 1 and 0 < sampling <= 1 and steps >= 1):
        raise ValueError("need epsilon > 0, 0 < delta < 1, 0 < sampling <= 1, steps >= 1")

    def spends(sigma: float) -> float:
        mechanism = Mechanism(
            MechanismKind.SUBSAMPLED_GAUSSIAN, sigma, count=steps, sampling=sampling
        )
        return _epsilon(mechanism, delta)

    low, high = 0.0, 1.0
    while spends(high) > epsilon:
        low, high = high, high * 2
        if high > _MAX_NOISE_MULTIPLIER:
            raise ValueError(f"no noise multiplier up to {_MAX_NOISE_MULTIPLIER:g} reaches it")
    while high - low > _CALIBRATION_TOLERANCE * high:
        middle = (low + high) / 2
        if spends(middle) > epsilon:
            low = middle
        else:
            high = middle
    return high


# --- randomness from the OS CSPRNG --------------------------------------------------------


def _csprng_normal(count: int, std: float) -> np.ndarray:
    """``count`` draws of N(0, std**2) from the OS CSPRNG (float64).

    Box-Muller on 53-bit uniforms; each value is the sum of :data:`_NOISE_DRAWS` such
    draws divided by the square root of their number (Opacus' secure-mode construction).
    """
    draws = count * _NOISE_DRAWS
    pairs = (draws + 1) // 2
    raw = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64).reshape(2, pairs)
    raw = raw >> np.uint64(64 - _UNIFORM_BITS)
    scale = 2.0**-_UNIFORM_BITS
    u1 = (raw[0].astype(np.float64) + 1.0) * scale  # (0, 1]: log is finite
    u2 = raw[1].astype(np.float64) * scale
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * math.pi * u2
    normal = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:draws]
    summed = normal.reshape(_NOISE_DRAWS, count).sum(axis=0)
    return np.asarray(summed * (std / math.sqrt(_NOISE_DRAWS)), dtype=np.float64)


class _PoissonBatches:
    """Row indices of each step of one epoch: each row in with probability at most
    ``rate``, independently, from the OS CSPRNG (a sampler for a ``DataLoader`` with
    ``batch_size=None``: each item is one step's index tensor, possibly empty)."""

    def __init__(self, rows: int, rate: float, steps: int) -> None:
        self.rows = rows
        self.steps = steps
        self.everyone = rate >= 1
        self.threshold = math.floor(rate * 2**_SAMPLING_BITS)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(self.steps):
            if self.everyone:
                yield torch.arange(self.rows)
                continue
            uniform = np.frombuffer(os.urandom(4 * self.rows), dtype=np.uint32)
            yield torch.from_numpy(np.flatnonzero(uniform < self.threshold))


# --- Opacus -------------------------------------------------------------------------------


@cache
def _opacus() -> tuple[Any, Any, Any]:
    """Opacus' ``PrivacyEngine``, ``ModuleValidator`` and a ``DPOptimizer`` whose noise comes
    from the OS CSPRNG (imported on first use: Opacus takes seconds to import)."""
    engine = importlib.import_module("opacus").PrivacyEngine
    validator = importlib.import_module("opacus.validators").ModuleValidator
    base = importlib.import_module("opacus.optimizers").DPOptimizer

    class CsprngDpOptimizer(base):  # type: ignore[misc, valid-type]
        """Opacus' ``DPOptimizer`` with the noise drawn from the OS CSPRNG."""

        def add_noise(self) -> None:
            std = float(self.noise_multiplier * self.max_grad_norm)
            params = list(self.params)
            sums = [p.summed_grad for p in params]
            if any(getattr(s, "_processed", False) for s in sums):
                raise DpTrainingError("clipped gradients used twice (zero_grad was not called)")
            noise = _csprng_normal(sum(s.numel() for s in sums), std)
            offset = 0
            for p, summed in zip(params, sums, strict=True):
                n = summed.numel()
                chunk = torch.from_numpy(noise[offset : offset + n]).to(summed.dtype)
                p.grad = (summed + chunk.reshape(summed.shape)).view_as(p)
                summed._processed = True  # Opacus' own check that a sum is noised once
                offset += n

    return engine, validator, CsprngDpOptimizer


@dataclass(frozen=True)
class DpTrainReport:
    """What one call of :func:`train_epochs_dp` did (kept at the node, never released)."""

    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    rows: int
    #: Rows sampled over all steps (each step's batch size varies around ``q * rows``).
    sampled_rows: int
    empty_steps: int
    #: Mean weighted loss over the rows sampled in the last epoch (before clipping).
    loss: float

    @property
    def mechanisms(self) -> tuple[Mechanism, ...]:
        """The noise of these steps, as the ledger composes it."""
        return (
            Mechanism(
                MechanismKind.SUBSAMPLED_GAUSSIAN,
                self.noise_multiplier,
                count=self.steps,
                sampling=self.sample_rate,
            ),
        )


def train_epochs_dp(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    *,
    epochs: int,
    pos_weight: float,
    seed: int,
) -> DpTrainReport:
    """Train ``model`` in place for ``epochs`` epochs of DP-SGD (``config.dp``); report them.

    The same loss and optimizer as :func:`~fedprop.models.train.train_epochs`, with Poisson
    sampling, per-row clipping and Gaussian noise, all random choices from the OS CSPRNG.
    ``seed`` is not used (see the module docstring). It does not check a budget: the node
    records :func:`dp_training_spend` first.
    """
    del seed  # nothing here is seeded: see the module docstring
    dp = _dp(config)
    if config.optimizer not in DP_OPTIMIZERS:
        raise SpecError(f"[train] optimizer: DP training does not run with {config.optimizer}")
    rows = len(features)
    if rows == 0:
        raise ValueError("no training rows")
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    engine_class, validator, optimizer_class = _opacus()
    model.train()  # whatever mode the caller left it in (Opacus validates training mode)
    problems = validator.validate(model, strict=False)
    if problems:
        raise DpTrainingError(f"Opacus cannot clip this model's per-row gradients: {problems[0]}")
    torch.set_num_threads(TORCH_THREADS)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)).reshape(-1, 1)
    rate = sample_rate(config.batch_size, rows)
    per_epoch = steps_per_epoch(config.batch_size, rows)
    loader: Any = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        sampler=_PoissonBatches(rows, rate, per_epoch),
        batch_size=None,
        # the loader draws a worker seed from this generator on each pass (no workers
        # here); its own, so that torch's global generator is never drawn from
        generator=torch.Generator(),
    )
    optimizer = plain_optimizer(model, config)
    with warnings.catch_warnings():
        for message in _SILENCED:
            warnings.filterwarnings("ignore", message=message)
        engine = engine_class(accountant="rdp")  # its accountant is unused: the ledger's is
        hooks, _, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,  # the loader's sampler is Poisson, from the CSPRNG
            wrap_model=False,
        )
    dp_optimizer = optimizer_class(
        optimizer,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=rate * rows,
        loss_reduction="mean",
    )
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], dtype=torch.float32))
    steps = sampled = empty = 0
    last = 0.0
    try:
        with warnings.catch_warnings():
            for message in _SILENCED:
                warnings.filterwarnings("ignore", message=message)
            for _ in range(epochs):
                total, seen = 0.0, 0
                for xb, yb in loader:
                    dp_optimizer.zero_grad()
                    loss = loss_fn(model(xb), yb)
                    loss.backward()  # an empty batch: no row gradients, the step is noise
                    dp_optimizer.step()
                    steps += 1
                    if len(xb) == 0:
                        empty += 1
                        continue
                    sampled += len(xb)
                    seen += len(xb)
                    total += float(loss.detach()) * len(xb)
                last = total / seen if seen else math.nan
    finally:
        dp_optimizer.zero_grad(set_to_none=True)
        hooks.cleanup()
        for p in model.parameters():
            if hasattr(p, "summed_grad"):
                del p.summed_grad
    return DpTrainReport(
        steps=steps,
        sample_rate=rate,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        rows=rows,
        sampled_rows=sampled,
        empty_steps=empty,
        loss=last,
    )
