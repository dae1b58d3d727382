"""Local training and scoring, the same code at every party and in baselines.

Training is seeded and deterministic: the same data, weights, config and seed
give the same result, so a federated run can be replayed and compared.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedprop.spec import ClassWeighting, OptimizerKind, TrainConfig

__all__ = ["positive_weight", "predict_proba", "train_epochs"]

#: Torch threads per training process; parties in a simulation share the machine's cores.
TORCH_THREADS = 1


def positive_weight(weighting: ClassWeighting, rows: int, positives: int) -> float:
    """Loss weight of a positive row, from global (federated) label counts.

    Every party must use the same weight, or the parties optimize different
    objectives and FedAvg no longer approximates the pooled model; so it is
    computed from the federation's counts, never a party's own.
    """
    if weighting is ClassWeighting.NONE:
        return 1.0
    if positives <= 0 or positives >= rows:
        raise ValueError("class weighting needs both positive and negative training rows")
    return (rows - positives) / positives


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer is OptimizerKind.SGD:
        return torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=0.9,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


def train_epochs(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    *,
    epochs: int,
    pos_weight: float,
    seed: int,
) -> float:
    """Train ``model`` in place for ``epochs`` passes; return the mean weighted loss of the last.

    Mini-batches are shuffled with a generator seeded by ``seed``.
    """
    if len(features) == 0:
        raise ValueError("no training rows")
    torch.set_num_threads(TORCH_THREADS)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)).reshape(-1, 1)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], dtype=torch.float32))
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            idx = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        last = total / len(x)
    return last


def predict_proba(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """Probability of the positive class for each row, as float64 in [0, 1]."""
    torch.set_num_threads(TORCH_THREADS)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
        return torch.sigmoid(logits).reshape(-1).double().numpy()
