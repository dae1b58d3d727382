"""Torch propensity models, local training and metrics."""

from fedprop.models.nets import build_model, load_vector, parameter_count, to_vector
from fedprop.models.train import positive_weight, predict_proba, train_epochs

__all__ = [
    "build_model",
    "load_vector",
    "parameter_count",
    "positive_weight",
    "predict_proba",
    "to_vector",
    "train_epochs",
]
