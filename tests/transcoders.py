"""Random transcoders on the tiny model of ``conftest.py`` (d_model 32, 2 layers), shared by the transcoder-circuit
and attribution-graph tests: per-layer (plain, skip, JumpReLU) and cross-layer, with every parameter drawn at
random so that no term of a decomposition is zero by accident."""

from __future__ import annotations

import torch

from interp.dictionaries import Dictionary, create

D, N = 32, 16


def randomised(d: Dictionary, scale: float = 0.3, seed: int = 0) -> Dictionary:
    """``d`` with every parameter drawn from N(0, scale²), input and output scales away from 1, and JumpReLU
    thresholds low enough that features fire."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        d.in_scale.fill_(0.8)
        d.out_scale.fill_(1.25)
        if hasattr(d, "log_threshold"):
            d.log_threshold.fill_(-2.0)
    return d


def per_layer(arch: str, fp: str, reads: str = "ln2.hook_normalized", layers: tuple[int, ...] = (0, 1),
              **kw) -> list[Dictionary]:
    """One random ``arch`` transcoder per layer, reading ``blocks.{l}.{reads}`` and predicting the MLP output."""
    return [randomised(create(arch, D, N, hook_in=f"blocks.{l}.{reads}", hook_out=f"blocks.{l}.hook_mlp_out",
                              normalization="scalar", model_fingerprint=fp, **kw), seed=l) for l in layers]


def clt(fp: str, skip: bool = True) -> Dictionary:
    """A random cross-layer transcoder over both layers, with a different scale per hook."""
    d = create("clt", 2 * D, 2 * N, hook_in="blocks.*.ln2.hook_normalized", hook_out="blocks.*.hook_mlp_out",
               hooks_in=("blocks.0.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"),
               hooks_out=("blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"), normalization="scalar", skip=skip,
               model_fingerprint=fp)
    randomised(d)
    with torch.no_grad():
        d.in_scale.copy_(torch.tensor([0.7, 1.3]))
        d.out_scale.copy_(torch.tensor([1.5, 0.6]))
    return d
