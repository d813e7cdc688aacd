"""The one training loop for every dictionary architecture, its checkpoints, and the evals."""

from interp.training.evals import evaluate, mmcs
from interp.training.loop import TrainConfig, TrainResult, train_dictionary

__all__ = ["TrainConfig", "TrainResult", "evaluate", "mmcs", "train_dictionary"]
