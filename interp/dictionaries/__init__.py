"""Sparse dictionaries: the interface, the registry of architectures, and save/load.

Adding an architecture is one new module here that defines a :class:`Dictionary` subclass and calls
:func:`register`, plus one import line below.
"""

from interp.dictionaries import clt, codebook, gated, jumprelu, matryoshka, mp, relu, topk  # noqa: F401  (registers)
from interp.dictionaries.attention import head_attribution
from interp.dictionaries.base import Dictionary, DictionaryConfig, StepOutput, TrainBatch, TrainState
from interp.dictionaries.registry import DESCRIPTIONS, PRESETS, REGISTRY, create, register
from interp.dictionaries.saving import check_compatible, load_dictionary, read_metrics, save_dictionary

__all__ = [
    "DESCRIPTIONS",
    "PRESETS",
    "REGISTRY",
    "Dictionary",
    "DictionaryConfig",
    "StepOutput",
    "TrainBatch",
    "TrainState",
    "check_compatible",
    "create",
    "head_attribution",
    "load_dictionary",
    "read_metrics",
    "register",
    "save_dictionary",
]
