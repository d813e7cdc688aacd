"""A tiny GPT-2 whose circuit is known by construction: the ground truth for probes and circuit discovery.

``write_planted_model(out_dir)`` writes a Hugging Face checkpoint (config, safetensors weights, a
character-level tokenizer) whose weights are set by hand, not trained. ``interp.load_model(out_dir)``
loads it like any local model. Its one job is in-context copying of ``[BOS] r r``, done by a
previous-token head feeding the key of an induction head (K-composition); every other head is a
distractor whose output no later component reads.

Layout (``PLANTED`` holds the same facts as data):

- 2 layers, 4 heads each, d_head 128, d_model 512, context 128, MLPs of width 4 with zero weights (they
  write nothing). Vocabulary of 99 characters: id 0 is ``<|endoftext|>`` (BOS/EOS), 1 ``<unk>``, 2 tab,
  3 newline, 4..98 the printable ASCII characters.
- The residual stream is a direct sum of named blocks: ``tok`` (one-hot current token), ``pos`` (one-hot
  position), ``ramp`` (position / 128, and a partner that keeps the norm constant), ``const`` (the same
  in every position), ``prev`` (one-hot previous token, written by L0H1), ``out`` (one-hot predicted
  token, written by L1H2), one ``junk`` block of 8 dimensions per distractor head, and ``sink`` (minus
  the sum of everything else, so every residual vector has mean zero and LayerNorm only rescales it).
  The LayerNorm gains are calibrated so that each LayerNorm maps the residual to itself.

Heads (attention logits quoted after the 1/sqrt(d_head) scaling):

- **L0H1, previous-token head (planted).** Q and K read only ``pos`` (position embedding): the query at
  position p matches the key at p - 1 with logit 20, every other key 0. V reads ``tok`` (token
  embedding); O writes the attended token one-hot into ``prev``.
- **L1H2, induction head (planted).** Q reads ``tok``; K reads ``prev`` (written by L0H1): a key whose
  previous token equals the query's token gets logit 25. When no key matches, Q's ``const`` (position
  embedding) and K's BOS component of ``tok`` (token embedding) give the BOS key logit 10, so the head
  rests on BOS, whose value is zero. V reads ``tok`` (token embedding) without BOS; O writes the
  attended token one-hot into ``out``. The unembedding reads only ``out`` (logit 20 for the copied
  token), so the model predicts "the token that followed the previous occurrence of the current token"
  and, with no previous occurrence, the uniform distribution.
- Distractors, each writing a balanced sign code (norm 0.25) of the token it reads into its own ``junk``
  block, which nothing reads: **L0H0** and **L1H0** attend to BOS; **L0H2** is a duplicate-token head
  (attends to the earliest earlier occurrence of the current token, else to itself); **L0H3** and
  **L1H3** attend to the current position; **L1H1** is a second previous-token head whose V reads
  ``prev`` (so the edge L0H1 -> L1H1 (V) exists in the weights but does not matter).

Ground truth for the task "predict the second copy of ``[BOS] r r``": nodes ``embed``, ``L0H1``,
``L1H2``, ``logits``; edges embed -> L0H1 (Q, K: positions; V: tokens), embed -> L1H2 (Q, V: tokens;
K: the BOS marker, which only decides where the head rests when nothing matches), L0H1 -> L1H2 (K),
L1H2 -> logits. No other head, no MLP and no direct path (embed -> logits) changes the logits: zero- or
mean-ablating a distractor leaves the copy intact, ablating L0H1 or L1H2 destroys it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from interp.io import atomic_directory
from interp.zoo.recipe import SPECIAL_TOKEN

VOCAB: tuple[str, ...] = (SPECIAL_TOKEN, "<unk>", "\t", "\n", *(chr(c) for c in range(32, 127)))
"""The planted tokenizer's vocabulary, in id order: BOS/EOS, unknown, tab, newline, printable ASCII."""

N_LAYERS, N_HEADS, D_HEAD, N_CTX, D_MLP = 2, 4, 128, 128, 4
D_MODEL = N_HEADS * D_HEAD
JUNK_DIM = 8
JUNK_NORM = 0.25
"""Norm of a distractor's write: small, so that removing it barely changes what the next LayerNorm divides by."""
PREV_LOGIT, IND_LOGIT, IND_REST_LOGIT, UNEMBED_LOGIT = 20.0, 25.0, 10.0, 20.0
SHARP_LOGIT = 20.0
"""Logit of the attended key of the distractors (BOS, self) and of every margin of the duplicate head."""


@dataclass(frozen=True)
class PlantedCircuit:
    """What the planted model computes, by construction. Heads are (layer, head); node names are ``embed``
    (token and position embeddings together), ``L{layer}H{head}`` and ``logits``."""

    previous_token_head: tuple[int, int] = (0, 1)
    """The planted previous-token head, whose output is the key of the induction head."""
    induction_head: tuple[int, int] = (1, 2)
    """The planted induction head, whose output is the prediction."""
    previous_token_heads: tuple[tuple[int, int], ...] = ((0, 1), (1, 1))
    """Heads attending to position t - 1 (L0H1 planted, L1H1 a distractor)."""
    induction_heads: tuple[tuple[int, int], ...] = ((1, 2),)
    """Heads attending to the token after the previous occurrence of the current token."""
    duplicate_token_heads: tuple[tuple[int, int], ...] = ((0, 2),)
    """Heads attending to earlier occurrences of the current token."""
    bos_heads: tuple[tuple[int, int], ...] = ((0, 0), (1, 0))
    """Heads attending to BOS at every position."""
    self_heads: tuple[tuple[int, int], ...] = ((0, 3), (1, 3))
    """Heads attending to the current position."""
    nodes: tuple[str, ...] = ("embed", "L0H1", "L1H2", "logits")
    """The components that the copy of ``[BOS] r r`` depends on, in forward order."""
    edges: tuple[tuple[str, str, str], ...] = (
        ("embed", "L0H1", "q"),
        ("embed", "L0H1", "k"),
        ("embed", "L0H1", "v"),
        ("embed", "L1H2", "q"),
        ("embed", "L1H2", "v"),
        ("L0H1", "L1H2", "k"),
        ("L1H2", "logits", ""),
    )
    """(source, destination, input of the destination head: q/k/v, or "" for the logits) that matter."""
    weak_edges: tuple[tuple[str, str, str], ...] = (("embed", "L1H2", "k"),)
    """Edges in the weights that only decide where L1H2 rests when no key matches (the BOS marker)."""
    unused_edges: tuple[tuple[str, str, str], ...] = (("L0H1", "L1H1", "v"),)
    """Edges in the weights into a head whose output nothing reads (a trap for weight-based methods);
    every edge into a distractor head is of this kind."""

    @property
    def distractor_heads(self) -> tuple[tuple[int, int], ...]:
        """Every head outside the circuit, in (layer, head) order."""
        planted = {self.previous_token_head, self.induction_head}
        return tuple((l, h) for l in range(N_LAYERS) for h in range(N_HEADS) if (l, h) not in planted)


PLANTED = PlantedCircuit()


class _Layout:
    """Offsets of the residual-stream blocks described in the module docstring."""

    def __init__(self) -> None:
        sizes = [("tok", len(VOCAB)), ("pos", N_CTX), ("prev", len(VOCAB)), ("out", len(VOCAB)),
                 ("ramp", 4), ("const", 2), ("junk", JUNK_DIM * 6), ("sink", 1)]
        self.start: dict[str, int] = {}
        offset = 0
        for name, size in sizes:
            self.start[name] = offset
            offset += size
        if offset > D_MODEL:
            raise AssertionError(f"planted layout needs {offset} dimensions, d_model is {D_MODEL}")

    def __getitem__(self, name: str) -> int:
        return self.start[name]


def _sign_codes(rng: np.random.Generator) -> np.ndarray:
    """(vocab, JUNK_DIM) balanced +-1 codes scaled to norm ``JUNK_NORM``: sum zero, so the sink stays constant."""
    base = np.array([1.0] * (JUNK_DIM // 2) + [-1.0] * (JUNK_DIM // 2))
    return np.stack([rng.permutation(base) for _ in VOCAB]) * JUNK_NORM / np.sqrt(JUNK_DIM)


def _embeddings(at: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Token embedding (vocab, d_model) and position embedding (n_ctx, d_model), each of mean zero."""
    wte = np.zeros((len(VOCAB), D_MODEL))
    wte[np.arange(len(VOCAB)), at["tok"] + np.arange(len(VOCAB))] = 1.0
    wpe = np.zeros((N_CTX, D_MODEL))
    wpe[np.arange(N_CTX), at["pos"] + np.arange(N_CTX)] = 1.0
    ramp = np.arange(N_CTX) / N_CTX
    partner = np.sqrt(1 - ramp**2)
    wpe[:, at["ramp"] : at["ramp"] + 4] = np.stack([ramp, -ramp, partner, -partner], axis=1)
    wpe[:, at["const"] : at["const"] + 2] = [1.0, -1.0]
    for table in (wte, wpe):
        table[:, at["sink"]] = -table.sum(axis=1)
    return wte, wpe


def _head_weights(at: _Layout, layer: int, head: int, codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """(W_Q, W_K, W_V) each (d_model, d_head) and W_O (d_head, d_model) of one head, in logit units.

    W_Q already carries the sqrt(d_head) that GPT-2's attention divides by.
    """
    wq, wk, wv = (np.zeros((D_MODEL, D_HEAD)) for _ in range(3))
    wo = np.zeros((D_HEAD, D_MODEL))
    scale = np.sqrt(D_HEAD)
    vocab, positions, const, bos = len(VOCAB), np.arange(N_CTX), at["const"], at["tok"]
    tokens = np.arange(1, vocab)  # every token but BOS
    role = _role(layer, head)
    if role == "prev":
        wq[at["pos"] + positions[1:], positions[:-1]] = PREV_LOGIT * scale
        wk[at["pos"] + positions, positions] = 1.0
    elif role == "self":
        wq[at["pos"] + positions, positions] = SHARP_LOGIT * scale
        wk[at["pos"] + positions, positions] = 1.0
    elif role == "bos":
        wq[const, 0] = SHARP_LOGIT * scale
        wk[bos, 0] = 1.0
    elif role == "dup":
        # match (+big) minus a ramp over key positions, so the earliest earlier occurrence beats the
        # query's own position by SHARP_LOGIT; BOS gets SHARP_LOGIT when even the query itself loses.
        slope = SHARP_LOGIT * N_CTX
        wq[at["tok"] + tokens, tokens] = (slope + 3 * SHARP_LOGIT) * scale
        wk[at["tok"] + tokens, tokens] = 1.0
        wq[const, 0], wk[bos, 0] = SHARP_LOGIT * scale, 1.0
        wq[const, vocab], wk[at["ramp"], vocab] = -slope * scale, 1.0
    elif role == "induction":
        wq[at["tok"] + tokens, tokens] = IND_LOGIT * scale
        wk[at["prev"] + tokens, tokens] = 1.0
        wq[const, 0], wk[bos, 0] = IND_REST_LOGIT * scale, 1.0
    if role == "prev" and layer == 0:
        wv[at["tok"] + np.arange(vocab), np.arange(vocab)] = 1.0
        wo[np.arange(vocab), at["prev"] + np.arange(vocab)] = 1.0
    elif role == "induction":
        wv[at["tok"] + tokens, tokens] = 1.0
        wo[tokens, at["out"] + tokens] = 1.0
    else:
        source = "prev" if role == "prev" else "tok"
        wv[at[source] : at[source] + vocab, :JUNK_DIM] = codes
        junk = at["junk"] + JUNK_DIM * _JUNK_SLOT[(layer, head)]
        wo[np.arange(JUNK_DIM), junk + np.arange(JUNK_DIM)] = 1.0
    wo[:, at["sink"]] = -wo.sum(axis=1)
    return wq, wk, wv, wo


_ROLES = {(0, 0): "bos", (0, 1): "prev", (0, 2): "dup", (0, 3): "self",
          (1, 0): "bos", (1, 1): "prev", (1, 2): "induction", (1, 3): "self"}
_JUNK_SLOT = {head: slot for slot, head in enumerate(h for h in sorted(_ROLES) if h not in {(0, 1), (1, 2)})}


def _role(layer: int, head: int) -> str:
    return _ROLES[(layer, head)]


def _tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over ``VOCAB``; unknown characters map to ``<unk>``; adds no BOS itself."""
    backend = Tokenizer(models.WordLevel({tok: i for i, tok in enumerate(VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        unk_token="<unk>",
        model_max_length=N_CTX,
    )


def build_planted_model() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """The planted model (float32, eval mode) and its tokenizer, in memory. Deterministic."""
    at = _Layout()
    config = GPT2Config(
        vocab_size=len(VOCAB), n_positions=N_CTX, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
        n_inner=D_MLP, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=False,
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    codes = _sign_codes(np.random.default_rng(0))
    wte, wpe = _embeddings(at)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.wte.weight.copy_(torch.from_numpy(wte))
        model.transformer.wpe.weight.copy_(torch.from_numpy(wpe))
        unembed = np.zeros((len(VOCAB), D_MODEL))
        tokens = np.arange(1, len(VOCAB))
        unembed[tokens, at["out"] + tokens] = UNEMBED_LOGIT
        model.lm_head.weight.copy_(torch.from_numpy(unembed))
        blocks: list[Any] = list(model.transformer.h)
        for layer, block in enumerate(blocks):
            heads = [_head_weights(at, layer, h, codes) for h in range(N_HEADS)]
            qkv = [np.concatenate([w[i] for w in heads], axis=1) for i in range(3)]  # 3 x (D, D)
            block.attn.c_attn.weight.copy_(torch.from_numpy(np.concatenate(qkv, axis=1)))
            block.attn.c_proj.weight.copy_(torch.from_numpy(np.concatenate([w[3] for w in heads], axis=0)))
            block.ln_2.weight.fill_(1.0)
    model.eval()
    _calibrate_layer_norms(model)
    return model, _tokenizer()


@torch.no_grad()
def _calibrate_layer_norms(model: GPT2LMHeadModel) -> None:
    """Set each LayerNorm gain to the RMS of its input, so that LayerNorm maps the residual to itself.

    The residual norm is the same at every position by construction (one-hot blocks, codes of equal norm),
    except before ``ln_f``, where it is calibrated on positions that copy (``out`` is set).
    """
    transformer: Any = model.transformer
    norms: list[Any] = [block.ln_1 for block in transformer.h] + [transformer.ln_f]
    seen: dict[int, torch.Tensor] = {}
    r = torch.arange(1, 33)
    probe = torch.cat([torch.zeros(1, dtype=torch.long), r, r])[None]  # [BOS] r r, no repeat inside r
    for index, norm in enumerate(norms):
        handle = norm.register_forward_pre_hook(lambda _m, args, i=index: seen.__setitem__(i, args[0]))
        model(probe)
        handle.remove()
        x = seen[index][0]  # (T, D)
        rms = (x.pow(2).mean(-1) + norm.eps).sqrt()
        target = rms[-16:].median() if norm is transformer.ln_f else rms.median()
        norm.weight.fill_(float(target))


def write_planted_model(out_dir: str | Path) -> Path:
    """Write the planted checkpoint (config, model.safetensors, tokenizer files) to ``out_dir``, atomically.

    Returns ``out_dir`` as a Path; ``interp.load_model(str(out_dir))`` loads it. The weights are the
    same on every call (no randomness but a fixed seed for the distractors' sign codes).
    """
    model, tokenizer = build_planted_model()
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
