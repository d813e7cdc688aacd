"""The one training loop for every dictionary architecture, its configs, checkpoints, and the evals."""

from interp.training.config import TrainConfig, load_train_configs
from interp.training.evals import EvalResult, evaluate, mmcs
from interp.training.loop import TrainResult, train_dictionary

__all__ = ["EvalResult", "TrainConfig", "TrainResult", "evaluate", "load_train_configs", "mmcs", "train_dictionary"]
