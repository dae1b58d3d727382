"""Non-federated reference models: the pooled (centralized) model and each party alone.

These are what a federated model is judged against. They use the same encoder,
model, optimizer and number of passes over the data as the federation, so the
comparison isolates the effect of federating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from fedprop.data.encoding import FeatureEncoder, local_stats
from fedprop.models.metrics import GlobalMetrics, ScoreHistogram, global_metrics
from fedprop.models.nets import build_model, load_vector
from fedprop.models.train import positive_weight, predict_proba, train_epochs
from fedprop.spec import JobSpec

__all__ = ["TrainedModel", "evaluate_scores", "federated_model", "train_on"]


@dataclass(frozen=True)
class TrainedModel:
    """A model with the encoder it was trained with."""

    encoder: FeatureEncoder
    model: nn.Module

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities for ``frame``'s rows."""
        return predict_proba(self.model, self.encoder.transform(frame))

    def metrics(self, frame: pd.DataFrame, bins: int) -> GlobalMetrics:
        """Metrics of this model on ``frame`` (which must carry labels)."""
        return evaluate_scores(self.scores(frame), self.encoder.labels(frame), bins)


def evaluate_scores(scores: np.ndarray, labels: np.ndarray, bins: int) -> GlobalMetrics:
    """Metrics computed exactly as the federation computes them, from a score histogram."""
    return global_metrics(ScoreHistogram.from_scores(scores, labels, bins))


def train_on(spec: JobSpec, frames: Sequence[pd.DataFrame]) -> TrainedModel:
    """Train the spec's model on the rows of ``frames`` pooled in one place.

    Trains for ``rounds * local-epochs`` passes: the same number of passes over
    each row that the federation makes.
    """
    pooled = pd.concat(frames, ignore_index=True)
    encoder = FeatureEncoder.from_global_stats(spec.schema, local_stats(pooled, spec.schema))
    model = build_model(spec.model, encoder.n_features, spec.train.seed)
    cfg = spec.train
    train_epochs(
        model,
        encoder.transform(pooled),
        encoder.labels(pooled),
        cfg,
        epochs=cfg.rounds * cfg.local_epochs,
        pos_weight=positive_weight(cfg.class_weighting, encoder.rows, encoder.positives),
        seed=cfg.seed,
    )
    return TrainedModel(encoder, model)


def federated_model(spec: JobSpec, stats: np.ndarray, weights: np.ndarray) -> TrainedModel:
    """The federation's final model, usable for scoring where its weights were released."""
    encoder = FeatureEncoder.from_global_stats(spec.schema, stats)
    model = build_model(spec.model, encoder.n_features, spec.train.seed)
    load_vector(model, weights)
    return TrainedModel(encoder, model)
