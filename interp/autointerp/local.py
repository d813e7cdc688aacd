"""The model and dictionary behind a feature store, for the parts of auto-interpretation that run them.

- hard negatives: a neighbouring feature's top windows on which this feature does not fire. The store
  keeps only window tokens, so the check runs the window alone (BOS + its tokens) through the model and
  the dictionary: the feature's activation on exactly the text a scorer shows;
- steering (the intervention scorer): greedy generation with ``coef`` x the feature's decoded direction
  added at the dictionary's output hook, at every position.

Everything goes through the package-level API of the lower stages (``interp.model.load_model``,
``interp.dictionaries.load_dictionary`` and the ``Model`` hooks), loaded lazily on first use and checked
against the store's model fingerprint.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from interp.autointerp.examples import Example
from interp.dictionaries import load_dictionary
from interp.errors import InterpError
from interp.model import load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalConfig:
    """The local models: the store's LM and dictionary, and the scorers' own models."""

    model: str | None = None
    """The LM the store was made with (hard negatives, intervention); default: the one its manifest names."""
    dictionary: str | None = None
    """The dictionary directory (hard negatives, intervention); default: the one the manifest names."""
    surprisal_model: str | None = None
    """Base LM of the surprisal scorer; default: the store's model."""
    embedding_model: str | None = None
    """Sentence-embedding model directory (Hugging Face format); default: the packaged all-MiniLM-L6-v2 of
    the optional extra interp[embed] when installed, else the embedding scorer is skipped."""
    steer_scale: float = 4.0
    """Intervention strength: the feature's direction is added with coefficient steer_scale x max activation."""
    n_prompts: int = 8
    """Prompts steered per feature (half to explain the effect, half to score it)."""
    prompt_tokens: int = 8
    """Tokens of each steering prompt (the start of a random store window)."""
    new_tokens: int = 12
    """Tokens generated per prompt, clean and steered."""
    device: str = "cpu"
    """Where local models run."""

    def __post_init__(self) -> None:
        if self.n_prompts < 2 or self.prompt_tokens < 1 or self.new_tokens < 1:
            raise InterpError("LocalConfig needs n_prompts >= 2, prompt_tokens >= 1 and new_tokens >= 1.")


class LocalModels:
    """Lazily loaded LM + dictionary of a feature store; one lock serialises all torch work."""

    def __init__(self, fs: Any, cfg: LocalConfig):
        self.fs = fs
        self.cfg = cfg
        self.lock = threading.Lock()
        self._model: Any = None
        self._dictionary: Any = None
        self._base: dict[str, Any] = {}

    # ---- loading -------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        if self._model is None:
            name = self.cfg.model or (self.fs.manifest.get("model") or {}).get("name")
            if not name:
                raise InterpError("The feature store names no model; pass --model.")
            model = load_model(name, device=self.cfg.device)
            want = (self.fs.manifest.get("model") or {}).get("fingerprint")
            if want and model.info.fingerprint != want:
                raise InterpError(f"Model {name} did not make feature store {self.fs.path}; pass the one that did "
                                  "with --model.")
            self._model = model
        return self._model

    @property
    def dictionary(self) -> Any:
        if self._dictionary is None:
            path = self.cfg.dictionary or (self.fs.manifest.get("inputs") or {}).get("dictionary")
            if not path:
                raise InterpError("The feature store does not say where its dictionary is; pass --dictionary.")
            d = load_dictionary(path, device=self.cfg.device).eval()
            if int(d.cfg.d_sae) != self.fs.n_features:
                raise InterpError(f"Dictionary {path} has {d.cfg.d_sae} features but the store has "
                                  f"{self.fs.n_features}; pass the dictionary that was analyzed.")
            self._dictionary = d
        return self._dictionary

    def base_model(self, name: str | None) -> Any:
        """A base LM by name (None: the store's model), loaded once."""
        if name is None:
            return self.model
        if name not in self._base:
            self._base[name] = load_model(name, device=self.cfg.device)
        return self._base[name]

    def available(self) -> str | None:
        """None when the model and dictionary load; else why not (for a clear skip message)."""
        try:
            self.model, self.dictionary  # noqa: B018
        except InterpError as e:
            return str(e)
        return None

    # ---- running -------------------------------------------------------------------------------
    def _hook_in(self) -> str:
        return str(self.dictionary.cfg.hook_in or self.fs.manifest["hook"])

    def _with_bos(self, ids: Sequence[int]) -> list[int]:
        bos = self.model.info.bos_token_id
        return list(ids) if bos is None or (ids and ids[0] == bos) else [bos, *ids]

    @torch.no_grad()
    def window_acts(self, windows: Sequence[Sequence[int]], features: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """For each window (token ids) the activations (len(feats), W) of its listed features, run alone."""
        hook = self._hook_in()
        out: list[torch.Tensor] = [torch.zeros(0)] * len(windows)
        by_len: dict[int, list[int]] = {}
        for n, w in enumerate(windows):
            by_len.setdefault(len(self._with_bos(w)), []).append(n)
        for rows in by_len.values():
            for a in range(0, len(rows), 64):
                chunk = rows[a: a + 64]
                toks = torch.tensor([self._with_bos(windows[n]) for n in chunk])
                acts = self.model.capture(toks, [hook]).acts[hook]  # (B, T, *hook_shape)
                B, T = acts.shape[:2]
                f = self.dictionary.encode(acts.reshape(B * T, -1).float()).reshape(B, T, -1).cpu()
                for b, n in enumerate(chunk):
                    drop = T - len(windows[n])  # the prepended BOS, if any
                    out[n] = f[b, drop:, list(features[n])].T.contiguous()
        return out

    def hard_negatives(self, features: Sequence[int], per_feature: int, per_neighbour: int = 2
                       ) -> dict[int, list[Example]]:
        """Up to ``per_feature`` verified hard negatives for each feature (see the module docstring)."""
        t, fs = self.fs.tensors, self.fs
        if per_feature <= 0 or "nbr_cooc_ids" not in t and "nbr_dec_ids" not in t:
            return {i: [] for i in features}
        cands: dict[int, list[tuple[int, int]]] = {}
        windows: dict[tuple[int, int], int] = {}  # (context, start) -> window number
        ids: list[list[int]] = []
        who: list[list[int]] = []
        for i in features:
            known = set(t["top_ctx"][i].tolist()) | set(t["quant_ctx"][i].tolist())
            for j in _neighbours(t, i):
                for k in range(min(per_neighbour, t["top_ctx"].shape[1])):
                    ctx, start = int(t["top_ctx"][j, k]), int(t["top_start"][j, k])
                    if start < 0 or ctx in known or len(cands.get(i, [])) >= 2 * per_feature:
                        continue
                    w = windows.setdefault((ctx, start), len(ids))
                    if w == len(ids):
                        ids.append(t["top_tokens"][j, k].tolist())
                        who.append([])
                    who[w].append(i)
                    cands.setdefault(i, []).append((j, k))
        acts = self.window_acts(ids, who) if ids else []
        out: dict[int, list[Example]] = {i: [] for i in features}
        for i, pairs in cands.items():
            for j, k in pairs:
                w = windows[(int(t["top_ctx"][j, k]), int(t["top_start"][j, k]))]
                mine = acts[w][who[w].index(i)]
                if float(mine.max()) > 0 or len(out[i]) >= per_feature:
                    continue
                out[i].append(Example(tuple(fs.token_strings(ids[w])), tuple(ids[w]), (0.0,) * len(ids[w]),
                                      int(t["top_ctx"][j, k]), int(t["top_start"][j, k]), "neighbour", False,
                                      source=j, source_acts=tuple(float(a) for a in t["top_acts"][j, k])))
        return out

    def direction(self, feature: int) -> torch.Tensor:
        """The feature's decoded direction in raw coordinates: decode(e_i) - decode(0), shape (d_out,)."""
        d = self.dictionary
        f = torch.zeros(2, int(d.cfg.d_sae), device=next(d.parameters()).device)
        f[0, feature] = 1.0
        out = d.decode(f).float()
        return (out[0] - out[1]).detach()

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, new_tokens: int, feature: int | None = None,
                 coef: float = 0.0) -> torch.Tensor:
        """Greedy continuations (B, new_tokens) of ``prompts`` (B, P), steering ``feature`` when given."""
        model = self.model
        hook = str(self.dictionary.cfg.hook_out or self._hook_in())
        ctx: Any = contextlib.nullcontext()
        if feature is not None:
            vec = (coef * self.direction(feature)).to(model.device)

            def steer(act: torch.Tensor, hook: Any) -> torch.Tensor:
                return act + vec.reshape(act.shape[2:]).to(act.dtype)

            ctx = model.hooks([(hook, steer)])
        tokens = prompts.to(model.device)
        with ctx:
            for _ in range(new_tokens):
                if tokens.shape[1] >= model.info.n_ctx:
                    break
                nxt = model.forward(tokens)[:, -1].argmax(-1, keepdim=True)
                tokens = torch.cat([tokens, nxt], dim=1)
        return tokens[:, prompts.shape[1]:].cpu()


def _neighbours(t: dict[str, torch.Tensor], i: int) -> list[int]:
    """Neighbours of ``i`` by co-occurrence and decoder cosine, interleaved, without repeats."""
    lists = [t[k][i].tolist() for k in ("nbr_cooc_ids", "nbr_dec_ids") if k in t]
    out: list[int] = []
    for row in zip(*lists):
        for j in row:
            if j >= 0 and j != i and j not in out:
                out.append(int(j))
    return out
