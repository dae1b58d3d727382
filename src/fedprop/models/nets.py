"""Torch propensity models and their parameters as one flat vector.

Federated aggregation works on flat float vectors (they are what gets summed,
and later encrypted), so every model here converts to and from one
``float64`` vector in a fixed order: :func:`to_vector` and :func:`load_vector`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedprop.spec import ModelConfig, ModelKind

__all__ = ["build_model", "load_vector", "parameter_count", "to_vector"]


def build_model(config: ModelConfig, n_features: int, seed: int) -> nn.Module:
    """Build a model whose output is one logit per row, initialized from ``seed``.

    The same config, feature count and seed give bit-identical initial weights at
    every party and at the coordinator.
    """
    generator_state = torch.random.get_rng_state()
    # The CPU generator alone initializes the layers (torch.manual_seed would also queue a
    # CUDA seeding, with a stack trace, on every call).
    torch.default_generator.manual_seed(seed)
    try:
        if config.kind is ModelKind.LOGREG:
            model: nn.Module = nn.Sequential(nn.Linear(n_features, 1))
        else:
            layers: list[nn.Module] = []
            width = n_features
            for hidden in config.hidden:
                layers += [nn.Linear(width, hidden), nn.ReLU()]
                width = hidden
            layers.append(nn.Linear(width, 1))
            model = nn.Sequential(*layers)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(torch.float32)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable values in ``model``."""
    return sum(p.numel() for p in model.parameters())


def to_vector(model: nn.Module) -> np.ndarray:
    """All parameters, in registration order, as one float64 vector."""
    with torch.no_grad():
        return np.concatenate(
            [p.detach().cpu().numpy().astype(np.float64).ravel() for p in model.parameters()]
        )


def load_vector(model: nn.Module, vector: np.ndarray) -> None:
    """Set all parameters from a vector made by :func:`to_vector` for the same architecture."""
    expected = parameter_count(model)
    if vector.ndim != 1 or vector.size != expected:
        raise ValueError(f"parameter vector has {vector.size} values, model needs {expected}")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            chunk = torch.from_numpy(np.ascontiguousarray(vector[offset : offset + n]))
            p.copy_(chunk.reshape(p.shape).to(p.dtype))
            offset += n
