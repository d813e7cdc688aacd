"""Activations as data: one :class:`ActivationSource` interface and its one batching loop, implemented by
the on-disk store, the model run on the fly, and in-memory tensors; plus the cache writer."""

from interp.activations.cache import CacheConfig, cache_activations
from interp.activations.live import ModelSource
from interp.activations.source import ActivationSource, Batch, RowSource
from interp.activations.store import ActivationStore, Chunk
from interp.activations.tensors import TensorSource

__all__ = [
    "ActivationSource",
    "ActivationStore",
    "Batch",
    "CacheConfig",
    "Chunk",
    "ModelSource",
    "RowSource",
    "TensorSource",
    "cache_activations",
]
