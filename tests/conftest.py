"""Shared fixtures: a tiny random GPT-2 with its own BPE tokenizer, and a small text corpus on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

CORPUS_LINES = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nimport sys\n\ndef main():\n    return os.path.join(sys.argv[0], 'x')\n",
    "while True:\n    value = compute(value)\n    if value > limit:\n        break\n",
]


def make_tiny_model(path: Path, *, vocab_size: int = 320, n_layer: int = 2, d: int = 32, n_ctx: int = 64,
                    extra_tokens: list[str] | None = None, seed: int = 0) -> Path:
    """Save a seeded random GPT-2 (HF format) with a byte-level BPE tokenizer trained on CORPUS_LINES."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS_LINES * 20, trainer)
    if extra_tokens:
        tok.add_tokens(extra_tokens)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    bos = fast.bos_token_id
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(fast), n_positions=n_ctx, n_embd=d, n_layer=n_layer, n_head=4,
                     bos_token_id=bos, eos_token_id=bos)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from interp.model.model import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forty small text documents (one per file)."""
    d = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        body = "".join(CORPUS_LINES[(i + j) % len(CORPUS_LINES)] for j in range(3))
        (d / f"doc{i:03d}.txt").write_text(f"# document {i}\n{body}")
    return d
