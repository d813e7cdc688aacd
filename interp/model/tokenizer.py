"""A checkpoint's tokenizer that encodes corpora without importing transformers.

Importing ``transformers``' tokenizer classes costs more CPU than torch itself, and corpora only ever need
``tokenizer(texts, add_special_tokens=False)["input_ids"]``. :class:`Tokenizer` answers that call with the
``tokenizers`` library on the checkpoint's own ``tokenizer.json`` (when the Hugging Face tokenizer is known to run
the same pipeline, see ``interp.model.checkpoint``), and hands every other attribute and call to the Hugging Face
tokenizer, loaded on first use and set up as the bridge sets it up (BOS and padding fall back to EOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def hf_tokenizer(path: Path) -> Any:
    """The Hugging Face tokenizer of checkpoint ``path``, with BOS and pad tokens falling back to EOS (as
    transformer-lens sets it up); None when it has no EOS token (the bridge would add one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.eos_token is None:
        return None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token
    return tok


def load_fast(path: Path) -> Any:
    """``tokenizers.Tokenizer`` of ``path/tokenizer.json`` with its own padding and truncation switched off
    (Hugging Face switches them off for a plain call)."""
    from tokenizers import Tokenizer as Backend

    fast = Backend.from_file(str(path / "tokenizer.json"))
    fast.no_padding()
    fast.no_truncation()
    return fast


class Tokenizer:
    """A checkpoint's tokenizer: the Hugging Face tokenizer's interface, with corpus encoding done natively.

    ``native``: ``tokenizer.json`` runs the same normalisation, pre-tokenisation and model as the Hugging Face
    tokenizer, so encoding without special tokens can skip it."""

    def __init__(self, path: Path, bos_token_id: int | None, eos_token_id: int | None, native: bool):
        self.path = path
        self._ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
        self._fast = load_fast(path) if native else None
        self._hf: Any = None

    @property
    def hf(self) -> Any:
        """The Hugging Face tokenizer (loaded on first use)."""
        if self._hf is None:
            self._hf = hf_tokenizer(self.path)
        return self._hf

    @property
    def bos_token_id(self) -> int | None:
        return self._ids["bos_token_id"]

    @property
    def eos_token_id(self) -> int | None:
        return self._ids["eos_token_id"]

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, **kwargs: Any) -> Any:
        """``{"input_ids": ids}`` for a string, or a list of id lists for a list of strings."""
        if self._fast is None or add_special_tokens or kwargs:
            return self.hf(text, add_special_tokens=add_special_tokens, **kwargs)
        texts = [text] if isinstance(text, str) else list(text)
        # encode_batch_fast (newer tokenizers) skips character offsets: the same ids (checked on every stdlib
        # file), 10-15% less time
        encode = getattr(self._fast, "encode_batch_fast", self._fast.encode_batch)
        ids = [e.ids for e in encode(texts, add_special_tokens=False)]
        return {"input_ids": ids[0] if isinstance(text, str) else ids}

    def get_vocab(self) -> dict[str, int]:
        return self._fast.get_vocab(with_added_tokens=True) if self._fast is not None else self.hf.get_vocab()

    def __len__(self) -> int:
        return len(self.hf)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (copying, unpickling): never load the tokenizer for these
            raise AttributeError(name)
        return getattr(self.hf, name)
