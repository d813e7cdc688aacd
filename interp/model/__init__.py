"""The model layer: load a language model, run it with TransformerLens hook names, and read corpora.

transformer-lens stays behind this package: nothing outside ``interp.model`` touches the bridge.
"""

from interp.model.corpus import Context, CorpusConfig, iter_contexts, iter_documents, pack_contexts, pack_token_ids
from interp.model.model import DEMO_DIR, DEMO_NAME, PROCESSING, Captured, Model, ModelInfo, load_model, next_token_loss
from interp.model.transformer import rotate

__all__ = [
    "DEMO_DIR",
    "DEMO_NAME",
    "PROCESSING",
    "Captured",
    "Context",
    "CorpusConfig",
    "Model",
    "ModelInfo",
    "iter_contexts",
    "iter_documents",
    "load_model",
    "next_token_loss",
    "pack_contexts",
    "pack_token_ids",
    "rotate",
]
