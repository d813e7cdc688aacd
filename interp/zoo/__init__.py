"""interp's embedded demo model: a small GPT-2 trained on the Python standard library's source.

``DEMO_DIR`` is the shipped checkpoint, in Hugging Face format, loadable like any local model.
``train_demo(ZooConfig(), out_dir)`` rebuilds it; ``zoo_card.json`` in the directory records the
config and the measured quality (held-out loss, unigram baseline, induction scores).
"""

from __future__ import annotations

from interp.model.model import DEMO_DIR
from interp.model.stdlib import iter_stdlib_documents, stdlib_files
from interp.zoo.induction import induction_score
from interp.zoo.recipe import ZooConfig, train_demo

__all__ = ["DEMO_DIR", "ZooConfig", "induction_score", "iter_stdlib_documents", "stdlib_files", "train_demo"]
