"""The recipe that trains interp's embedded demo model from the standard library's source.

Designed under these constraints: two CPU cores retrain it within half an hour, with no network; the
result is small enough to ship in the repository; and it has the circuits interpretability work studies
(a previous-token head in layer 0, an induction head in layer 1, in-context copying), measured by
:mod:`interp.zoo.probes` and written to ``zoo_card.json``.

Stages: train a byte-level BPE tokenizer on the train split (:mod:`interp.zoo.data`); build a small Llama
and train it on natural contexts mixed with synthetic rows (:mod:`interp.zoo.trainer`); measure it on the
held-out split and the probes (:mod:`interp.zoo.card`); write the checkpoint in Hugging Face format plus
``zoo_card.json``, atomically. Everything is seeded: the same config, corpus and library versions give the
same weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch
import transformers

from interp.io import atomic_directory
from interp.model.stdlib import Split, corpus_fingerprint, stdlib_files
from interp.zoo.card import NATURAL_CONTEXTS, NATURAL_SEQ_LEN, card_sections, evaluate_baselines, evaluate_model
from interp.zoo.config import ZooConfig
from interp.zoo.data import SPECIAL_TOKEN, read_files, tokenize_documents, train_tokenizer, unigram_distribution
from interp.zoo.tasks import encode_documents, pack_documents
from interp.zoo.trainer import build_model, train_model, training_batches

logger = logging.getLogger(__name__)

__all__ = ["CARD_NAME", "SPECIAL_TOKEN", "ZooConfig", "corpus_files", "train_demo"]

CARD_NAME = "zoo_card.json"
CARD_SCHEMA_VERSION = 2


def corpus_files(cfg: ZooConfig, split: Split) -> list[Path]:
    """The files of ``split`` that the recipe uses: all of them, or the first ``cfg.max_files``."""
    return stdlib_files(split)[: cfg.max_files]


def train_demo(cfg: ZooConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train the demo model with ``cfg`` and write it to ``out_dir``; returns the zoo card it wrote.

    ``out_dir`` receives the model (``config.json``, ``model.safetensors``), the tokenizer files and
    ``zoo_card.json``; it is written to a temporary directory first and renamed into place, replacing
    whatever ``out_dir`` held.
    """
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        train_files, heldout_files = corpus_files(cfg, "train"), corpus_files(cfg, "heldout")
        logger.info("corpus: %d train files, %d held-out files", len(train_files), len(heldout_files))
        tokenizer = train_tokenizer(cfg.vocab_size, cfg.n_ctx, train_files)
        train_docs = tokenize_documents(tokenizer, train_files)
        logger.info("tokenizer: %d tokens; train split %d tokens", len(tokenizer), sum(map(len, train_docs)))
        model = build_model(cfg, tokenizer)
        logger.info("model: %d parameters", model.num_parameters())
        heldout = pack_documents(
            encode_documents(tokenizer, list(read_files(heldout_files))), cfg.n_ctx, tokenizer.bos_token_id,
            tokenizer.eos_token_id,
        )
        unigram = unigram_distribution(train_docs, len(tokenizer), tokenizer.bos_token_id)
        batches = training_batches(cfg, train_docs, tokenizer.bos_token_id, unigram)
        train_loss = train_model(cfg, model, batches, heldout.contexts[:4, : cfg.seq_len])
        if cfg.save_dtype == "float16":
            model.half().float()  # evaluate exactly the weights that are saved
        evaluation = evaluate_model(model, tokenizer, heldout, cfg.probe_seq_len, cfg.probe_batch, cfg.seed)
        card = {
            "schema_version": CARD_SCHEMA_VERSION,
            "config": dataclasses.asdict(cfg),
            "parameter_count": model.num_parameters(),
            "training_tokens": cfg.training_tokens,
            "final_train_loss": train_loss,
            **card_sections(evaluation, evaluate_baselines(train_docs, heldout, len(tokenizer))),
            **_provenance(cfg, train_files, heldout_files),
        }
        _log_card(card)
        with atomic_directory(out_dir) as tmp:
            model.to(getattr(torch, cfg.save_dtype)).save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            card["wall_time_s"] = round(time.perf_counter() - started, 1)
            (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
        logger.info("wrote %s in %.0f s", out_dir, card["wall_time_s"])
        return card
    finally:
        torch.set_num_threads(previous_threads)


def _provenance(cfg: ZooConfig, train_files: list[Path], heldout_files: list[Path]) -> dict[str, Any]:
    """The card's probe settings, corpus identity and library versions."""
    return {
        "probes": {"seq_len": cfg.probe_seq_len, "batch": cfg.probe_batch, "seed": cfg.seed,
                   "natural_contexts": NATURAL_CONTEXTS, "natural_seq_len": NATURAL_SEQ_LEN},
        "corpus": {
            "train_files": len(train_files),
            "heldout_files": len(heldout_files),
            "train_fingerprint": corpus_fingerprint(train_files),
            "python_version": platform.python_version(),
        },
        "wall_time_s": 0.0,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
    }


def _log_card(card: dict[str, Any]) -> None:
    logger.info(
        "held-out loss %.4f (unigram %.4f); best previous-token head %s, induction head %s; copying gap %.2f",
        card["heldout_loss"], card["unigram_loss"], card["best_previous_token_head"],
        card["best_induction_head"], card["copying_gap"]["gap"],
    )
