"""The codebook bottleneck (Tamkin et al. 2023) and its on-disk format.

At a hook site the activation is replaced by the mean of its k best-matching codes (see
``interp.codebooks.finetune`` for the maths and the gradients). :func:`codebook_hooks` splices
bottlenecks into a model's forward pass; a :class:`CodeForce` overrides the selected codes (steering).
Codebooks are saved as ``codebooks.safetensors`` + ``codebooks.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from interp.errors import InterpError
from interp.io import atomic_write_json, load_tensors, read_json, save_tensors
from interp.model.model import HookFn

FORMAT = "interp.codebooks"


VERSION = 1


CODEBOOKS_FILE = "codebooks.safetensors"


CODEBOOKS_CFG = "codebooks.json"


LN_EPS = 1e-5


_HEAD_SITE = re.compile(r"^blocks\.\d+\.attn\.hook_z$")


class CodeForce(NamedTuple):
    """Force one code into one codebook (group) of a site, at some positions."""

    group: int
    """Codebook index at the site: the head for ``attn.hook_z``, 0 otherwise."""
    code: int
    """Code id to force."""
    positions: Sequence[int] | None = None
    """Positions to force at (negative counts from the end); None forces every position."""
    mode: Literal["include", "replace"] = "include"
    """``include``: the code takes the last (lowest-similarity) slot unless already selected;
    ``replace``: all k slots, so y = that code."""


class SnapOutput(NamedTuple):
    """One bottleneck forward pass."""

    out: torch.Tensor
    """Replacement activation (..., G, D): y in value, straight-through gradient to x~."""
    codes: torch.Tensor
    """Selected code ids (..., G, k), best match first (after any forcing), int64."""
    aeloss: torch.Tensor
    """Scalar reconstruction loss mean((y - stopgrad(x~))^2)."""
    inputs: torch.Tensor
    """x~ = LN(x) (..., G, D), detached (dead-code replacement draws from it)."""


class CodebookBottleneck(nn.Module):
    """G codebooks of N codes in D dims at one hook site.

    Parameters: ``codes`` (G, N, D); ``ln_weight`` and ``ln_bias`` (G, D). ``forward`` takes the
    hook activation viewed as (..., G, D).
    """

    def __init__(self, site: str, n_groups: int, n_codes: int, dim: int, k: int):
        super().__init__()
        if k > n_codes:
            raise InterpError(f"k ({k}) cannot exceed the number of codes ({n_codes}).")
        self.site, self.k = site, k
        self.codes = nn.Parameter(torch.randn(n_groups, n_codes, dim))
        self.ln_weight = nn.Parameter(torch.ones(n_groups, dim))
        self.ln_bias = nn.Parameter(torch.zeros(n_groups, dim))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(G, N, D)."""
        g, n, d = self.codes.shape
        return int(g), int(n), int(d)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x~ = LN(x) per group: (..., G, D) -> (..., G, D)."""
        mu = x.mean(-1, keepdim=True)
        std = (x.var(-1, keepdim=True, unbiased=False) + LN_EPS).sqrt()
        return (x - mu) / std * self.ln_weight + self.ln_bias

    def select(self, xt: torch.Tensor) -> torch.Tensor:
        """Top-k code ids (..., G, k) of x~ (..., G, D) by x~ . c / ||c||, best first."""
        unit = self.codes.detach() / self.codes.detach().norm(dim=-1, keepdim=True).clamp_min(1e-12)
        sims = torch.einsum("...gd,gnd->...gn", xt.detach(), unit)  # (..., G, N)
        return sims.topk(self.k, dim=-1, sorted=True).indices

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """y = mean of the selected code vectors: ids (..., G, k) -> (..., G, D)."""
        group = torch.arange(codes.shape[-2], device=codes.device)[:, None]  # (G, 1) broadcasts with ids
        return self.codes[group, codes].mean(-2)  # (..., G, k, D) -> (..., G, D)

    def forward(self, x: torch.Tensor, forces: Sequence[CodeForce] = ()) -> SnapOutput:
        xt = self.normalize(x)
        codes = self.select(xt)
        for force in forces:
            codes = apply_force(codes, force)
        y = self.decode(codes)
        aeloss = (y - xt.detach()).pow(2).mean()
        return SnapOutput(y + xt - xt.detach(), codes, aeloss, xt.detach())


def apply_force(codes: torch.Tensor, force: CodeForce) -> torch.Tensor:
    """Code ids (B, T, G, k) with ``force`` applied (a new tensor)."""
    n_groups, seq = codes.shape[-2], codes.shape[1]
    if not 0 <= force.group < n_groups:
        raise InterpError(f"Codebook group {force.group} does not exist; this site has {n_groups}.")
    codes = codes.clone()
    at = torch.zeros(seq, dtype=torch.bool, device=codes.device)
    if force.positions is None:
        at[:] = True
    else:
        at[[p % seq for p in force.positions if -seq <= p < seq]] = True
    slots = codes[:, :, force.group]  # (B, T, k), a view
    if force.mode == "replace":
        slots[:, at] = force.code
    else:
        missing = at[None, :] & ~(slots == force.code).any(-1)  # (B, T)
        last = slots[..., -1]
        last[missing] = force.code
    return codes


# ---- a set of bottlenecks and its hooks -----------------------------------------------------------
Codebooks = dict[str, CodebookBottleneck]
"""Site name -> bottleneck, in model order."""


def codebook_hooks(
    codebooks: Mapping[str, CodebookBottleneck],
    forces: Mapping[str, Sequence[CodeForce]] | None = None,
    record: MutableMapping[str, SnapOutput] | None = None,
) -> list[tuple[str, HookFn]]:
    """Forward hooks for :meth:`Model.hooks` that replace each site's activation by its codebook output.

    ``forces[site]`` are applied at that site; ``record[site]`` receives each pass's :class:`SnapOutput`.
    """

    def make(site: str, cb: CodebookBottleneck) -> HookFn:
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            grouped = act.ndim == 4  # (B, T, H, d_head); otherwise (B, T, d) is one group
            x = act if grouped else act.unsqueeze(-2)
            snap = cb(x.to(cb.codes.dtype), (forces or {}).get(site, ()))
            if record is not None:
                record[site] = snap
            out = snap.out if grouped else snap.out.squeeze(-2)
            return out.to(act.dtype)

        return hook

    return [(site, make(site, cb)) for site, cb in codebooks.items()]


def site_shape(site: str, act: torch.Tensor) -> tuple[int, int]:
    """(G, D) of the codebook at ``site`` given its activation ``act``: (n_heads, d_head) for
    ``attn.hook_z`` (B, T, H, d_head), else (1, width) for (B, T, width)."""
    if act.ndim == 4:
        if not _HEAD_SITE.match(site):
            raise InterpError(f"Per-head codebooks are supported at blocks.L.attn.hook_z, not {site!r}.")
        return int(act.shape[2]), int(act.shape[3])
    if act.ndim != 3:
        raise InterpError(f"Hook {site!r} has shape {tuple(act.shape)}; a codebook needs (batch, pos, d).")
    return 1, int(act.shape[2])


# ---- save / load ---------------------------------------------------------------------------------
def save_codebooks(codebooks: Mapping[str, CodebookBottleneck], path: str | Path, **meta: Any) -> Path:
    """Write ``codebooks.safetensors`` (``{site}.codes`` ...) and ``codebooks.json`` into directory ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"{s}.{n}": p.detach().cpu() for s, cb in codebooks.items() for n, p in cb.named_parameters()}
    save_tensors(path / CODEBOOKS_FILE, tensors, metadata={"format": FORMAT})
    sites = {s: {"n_groups": cb.shape[0], "n_codes": cb.shape[1], "dim": cb.shape[2], "k": cb.k}
             for s, cb in codebooks.items()}
    atomic_write_json(path / CODEBOOKS_CFG, {"format": FORMAT, "version": VERSION, "sites": sites, **meta})
    return path


def load_codebooks(path: str | Path, device: str = "cpu") -> Codebooks:
    """Rebuild the codebooks saved by :func:`save_codebooks`, in saved site order."""
    path = Path(path)
    raw = read_json(path / CODEBOOKS_CFG, "codebook config")
    if raw.get("format") != FORMAT or raw.get("version", 0) > VERSION:
        raise InterpError(f"{path / CODEBOOKS_CFG} is not an interp codebook config this version can read.")
    tensors = load_tensors(path / CODEBOOKS_FILE, device=device)
    out: Codebooks = {}
    for site, spec in raw["sites"].items():
        cb = CodebookBottleneck(site, spec["n_groups"], spec["n_codes"], spec["dim"], spec["k"]).to(device)
        state = {n: tensors[f"{site}.{n}"] for n, _ in cb.named_parameters() if f"{site}.{n}" in tensors}
        cb.load_state_dict(state)  # strict: a missing tensor raises
        out[site] = cb
    return out
