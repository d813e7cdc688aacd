"""Activations as data: the store format and reader, the cache writer, the model as a live source, and
in-memory tensors, all behind one streaming interface."""

from interp.activations.cache import CacheConfig, cache_activations
from interp.activations.live import ModelSource
from interp.activations.store import ActivationStore, Batch, Chunk
from interp.activations.synthetic import TensorStore

__all__ = ["ActivationStore", "Batch", "CacheConfig", "Chunk", "ModelSource", "TensorStore", "cache_activations"]
