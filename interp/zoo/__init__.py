"""interp's embedded demo model: a small transformer trained on the Python standard library's source.

``DEMO_DIR`` is the shipped checkpoint, in Hugging Face format, loadable like any local model.
``train_demo(ZooConfig(), out_dir)`` rebuilds it; ``zoo_card.json`` in the directory records the
config and the measured quality (held-out loss, baselines, every head's probe scores, code tasks).
``write_planted_model(out_dir)`` writes a tiny hand-set model whose circuit is known by construction
(``PLANTED``), the ground truth that probes and circuit discovery are tested against.
"""

from __future__ import annotations

from interp.model.model import DEMO_DIR
from interp.model.stdlib import iter_stdlib_documents, stdlib_files
from interp.zoo.planted import PLANTED, PlantedCircuit, write_planted_model
from interp.zoo.probes import CopyingGap, HeadScores, copying_gap, head_scores, induction_score
from interp.zoo.recipe import ZooConfig, train_demo

__all__ = [
    "DEMO_DIR",
    "CopyingGap",
    "HeadScores",
    "PLANTED",
    "PlantedCircuit",
    "ZooConfig",
    "copying_gap",
    "head_scores",
    "induction_score",
    "iter_stdlib_documents",
    "stdlib_files",
    "train_demo",
    "write_planted_model",
]
