"""Standard dictionary metrics (specs/methods.md section 10) and their plots.

:func:`evaluate` streams rows of an activation store through a dictionary and reports sparsity,
liveness and reconstruction; given the :class:`interp.model.Model` the store came from, it also
splices the reconstruction into the forward pass and reports CE loss recovered and KL.

Definitions (all statistics over the evaluated rows; BOS rows excluded):
- L0 = E #{i : f_i != 0}; L1 = E sum_i |f_i|.
- FVU = E||x - x_hat||^2 / E||x - E[x]||^2; cosine = E cos(x, x_hat); L2 ratio = E ||x_hat|| / ||x||;
  relative reconstruction bias (shrinkage) gamma = E||x_hat||^2 / E[x . x_hat] (< 1 means shrinkage).
- dead: latents that never fire on the evaluated rows; dense: firing frequency > ``dense_threshold``.
- CE loss recovered = (L_zero - L_splice) / (L_zero - L_clean), where L_splice replaces the activation
  at the dictionary's output hook with the reconstruction and L_zero zero-ablates it, both at every
  non-BOS position; KL = mean per-token KL(p_clean || p_splice) over non-BOS positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from interp.activations.source import ActivationSource
from interp.activations.store import ActivationStore
from interp.dictionaries import Dictionary, check_compatible
from interp.errors import InterpError
from interp.model import Model, next_token_loss


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one dictionary on one store."""

    n_tokens: int
    """Rows evaluated for the reconstruction metrics."""
    l0: float
    """Mean active latents per token."""
    l1: float
    """Mean sum of |activations| per token."""
    fvu: float
    """Fraction of variance unexplained."""
    mse: float
    """Mean squared error per token, summed over dimensions."""
    cosine: float
    """Mean cosine similarity of x and x_hat."""
    l2_ratio: float
    """Mean ||x_hat|| / ||x||."""
    shrinkage: float
    """Relative reconstruction bias gamma = E||x_hat||^2 / E[x . x_hat]."""
    dead_fraction: float
    """Fraction of latents that never fired."""
    dense_fraction: float
    """Fraction of latents firing on more than ``dense_threshold`` of tokens."""
    dense_threshold: float
    """The density threshold used for ``dense_fraction``."""
    density: tuple[float, ...] = field(repr=False, default=())
    """Per-latent firing frequency (d_sae entries)."""
    ce_clean: float | None = None
    """Clean next-token CE (nats/token), with a model."""
    ce_spliced: float | None = None
    """CE with the reconstruction spliced in."""
    ce_ablated: float | None = None
    """CE with the site zero-ablated."""
    ce_loss_recovered: float | None = None
    """(ce_ablated - ce_spliced) / (ce_ablated - ce_clean)."""
    delta_lm_loss: float | None = None
    """ce_spliced - ce_clean."""
    kl: float | None = None
    """Mean KL(p_clean || p_spliced) per token."""
    kl_ablated: float | None = None
    """Mean KL(p_clean || p_ablated) per token."""
    ce_tokens: int | None = None
    """Tokens scored for the downstream metrics."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metrics; the per-latent density becomes a log10 histogram."""
        out = {k: v for k, v in asdict(self).items() if k != "density"}
        out["density_log10_histogram"] = log10_histogram(self.density)
        return out


def mmcs(decoder: torch.Tensor, ground_truth: torch.Tensor) -> float:
    """Mean max cosine similarity: for each ground-truth direction (G, d), the best-matching learned
    atom (n, d); averaged over the ground truth (Sharkey et al. 2022)."""
    dec = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gt = ground_truth / ground_truth.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((gt.to(dec.dtype) @ dec.T).max(dim=1).values.mean())


def log10_histogram(density: Sequence[float], bins: int = 20, low: float = -7.0) -> dict[str, list[float]]:
    """Counts of log10 firing frequency in ``bins`` equal bins on [low, 0]; never-firing latents separate."""
    d = torch.tensor(list(density), dtype=torch.float64)
    alive = d[d > 0].log10().clamp_min(low)
    counts = torch.histc(alive, bins=bins, min=low, max=0.0) if alive.numel() else torch.zeros(bins)
    edges = torch.linspace(low, 0.0, bins + 1)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "dead": [float((d == 0).sum())]}


@torch.no_grad()
def evaluate(
    dictionary: Dictionary,
    store: ActivationSource,
    *,
    model: Model | None = None,
    n_tokens: int = 100_000,
    batch_size: int = 4096,
    dense_threshold: float = 0.1,
    ce_tokens: int = 8192,
    ce_batch_contexts: int = 8,
) -> EvalResult:
    """Evaluate ``dictionary`` on up to ``n_tokens`` rows of ``store``, in source order; with ``model``, also
    the downstream metrics on ``ce_tokens`` tokens (these need the token ids of an :class:`ActivationStore`)."""
    check_compatible(dictionary, store.model, {h: store.d(h) for h in store.hooks})
    if n_tokens < 1 or not 0 < dense_threshold < 1:
        raise InterpError("evaluate needs n_tokens >= 1 and 0 < dense_threshold < 1.")
    dictionary.eval()
    stats = _reconstruction(dictionary, store, n_tokens, batch_size)
    n = stats.pop("n")
    density = stats.pop("fires") / n
    result: dict[str, Any] = dict(
        n_tokens=n,
        **stats,
        dead_fraction=float((density == 0).double().mean()),
        dense_fraction=float((density > dense_threshold).double().mean()),
        dense_threshold=dense_threshold,
        density=tuple(density.tolist()),
    )
    if model is not None:
        check_compatible(dictionary, model.info)
        result.update(_downstream(dictionary, store, model, ce_tokens, ce_batch_contexts))
    return EvalResult(**result)


def _reconstruction(d: Dictionary, store: ActivationSource, n_tokens: int, batch_size: int) -> dict[str, Any]:
    hooks = sorted({*d.input_hooks, *d.output_hooks})
    acc = {k: 0.0 for k in ("err", "sq", "xx", "cos", "ratio", "hh", "xh", "l0", "l1")}
    sum_x = torch.zeros(d.cfg.d_out, dtype=torch.float64)
    fires = torch.zeros(d.cfg.d_sae, dtype=torch.float64)
    n = 0
    for batch in store.batches(hooks, batch_size, epochs=1, seed=0, shuffle=False, drop_last=False):
        x, y = d.input_rows(batch.acts)[: n_tokens - n], d.output_rows(batch.acts)[: n_tokens - n]
        xn, st = d.normalize_input(x)
        f = d.encode_normalized(xn)
        y_hat = d.denormalize_output(d.reconstruct_normalized(xn), st).double()
        y = y.double()
        acc["err"] += float((y - y_hat).pow(2).sum())
        acc["sq"] += float(y.pow(2).sum())
        sum_x += y.sum(0)
        acc["cos"] += float(torch.nn.functional.cosine_similarity(y, y_hat, dim=1).sum())
        acc["ratio"] += float((y_hat.norm(dim=1) / y.norm(dim=1).clamp_min(1e-12)).sum())
        acc["hh"] += float(y_hat.pow(2).sum())
        acc["xh"] += float((y * y_hat).sum())
        active = f != 0
        acc["l0"] += float(active.sum())
        acc["l1"] += float(f.abs().sum())
        fires += active.sum(0).double()
        n += len(x)
        if n >= n_tokens:
            break
    if n == 0:
        raise InterpError("The store yielded no rows to evaluate.")
    var = acc["sq"] - float(sum_x.pow(2).sum()) / n
    return dict(
        n=n,
        l0=acc["l0"] / n,
        l1=acc["l1"] / n,
        fvu=acc["err"] / max(var, 1e-30),
        mse=acc["err"] / n,
        cosine=acc["cos"] / n,
        l2_ratio=acc["ratio"] / n,
        shrinkage=acc["hh"] / max(acc["xh"], 1e-30),
        fires=fires,
    )


def _downstream(
    d: Dictionary, store: ActivationSource, model: Model, ce_tokens: int, batch_contexts: int
) -> dict[str, Any]:
    if not isinstance(store, ActivationStore):
        raise InterpError(
            "CE loss recovered needs the store's token ids; evaluate on a store from interp cache."
        )
    ctx = store.ctx_len
    n_ctx = max(1, min(store.n_rows // ctx, math.ceil(ce_tokens / ctx)))
    tokens = store.column("tokens")[: n_ctx * ctx].long().view(n_ctx, ctx)
    keep = store.column("pos")[: n_ctx * ctx].view(n_ctx, ctx) >= 0  # False at inserted BOS rows
    if len(d.output_hooks) > 1 and not d.causal:
        raise InterpError(
            f"This {d.cfg.architecture} dictionary predicts {len(d.output_hooks)} hooks from all of its inputs at "
            "once, so it cannot be spliced into one forward pass; evaluate it without a model."
        )
    sums = {"clean": 0.0, "splice": 0.0, "zero": 0.0, "kl": 0.0, "kl_zero": 0.0}
    count = 0
    for a in range(0, n_ctx, batch_contexts):
        toks, mask = tokens[a : a + batch_contexts], keep[a : a + batch_contexts]
        clean = model.forward(toks).float()
        spliced = _run_spliced(d, model, toks, mask, ablate=False).float()
        zeroed = _run_spliced(d, model, toks, mask, ablate=True).float()
        m = mask[:, :-1].to(clean.device)
        for key, logits in (("clean", clean), ("splice", spliced), ("zero", zeroed)):
            sums[key] += float(next_token_loss(logits, toks)[m].sum())
        logp = clean[:, :-1].log_softmax(-1)
        for key, logits in (("kl", spliced), ("kl_zero", zeroed)):
            kl = (logp.exp() * (logp - logits[:, :-1].log_softmax(-1))).sum(-1)
            sums[key] += float(kl[m].sum())
        count += int(m.sum())
    ce = {k: v / max(count, 1) for k, v in sums.items()}
    denom = ce["zero"] - ce["clean"]
    return dict(
        ce_clean=ce["clean"],
        ce_spliced=ce["splice"],
        ce_ablated=ce["zero"],
        ce_loss_recovered=(ce["zero"] - ce["splice"]) / denom if abs(denom) > 1e-12 else float("nan"),
        delta_lm_loss=ce["splice"] - ce["clean"],
        kl=ce["kl"],
        kl_ablated=ce["kl_zero"],
        ce_tokens=count,
    )


def _run_spliced(d: Dictionary, model: Model, toks: torch.Tensor, mask: torch.Tensor, ablate: bool) -> torch.Tensor:
    """Logits with every output hook of ``d`` replaced (by the reconstruction, or zeros) where ``mask``.

    Output hook j's reconstruction is computed from the input hooks as they are in this forward pass, with
    the inputs not reached yet set to 0: exact for one hook, and for a causal dictionary (output j reads
    inputs 0..j only), whose splice is then the closed-loop replacement of every output at once."""
    ins, outs = d.input_hooks, d.output_hooks
    captured: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable[[torch.Tensor, Any], None]:
        def hook(act: torch.Tensor, hook: Any) -> None:
            captured[name] = act
        return hook

    def replace(name: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if ablate:
                new = torch.zeros_like(act)
            else:
                if name in ins:  # an autoencoder reads the activation it replaces
                    captured[name] = act
                n, width_in, width_out = act.shape[0] * act.shape[1], d.cfg.d_in // len(ins), d.cfg.d_out // len(outs)
                rows = {h: captured[h].reshape(n, -1) if h in captured else act.new_zeros(n, width_in) for h in ins}
                j = outs.index(name)
                y = d(d.input_rows(rows).to(d.in_scale.device).float())[:, j * width_out : (j + 1) * width_out]
                new = y.to(act.dtype).view_as(act)
            where = mask.to(act.device).view(*mask.shape, *([1] * (act.dim() - 2)))
            return torch.where(where, new, act)
        return hook

    hooks = [(h, grab(h)) for h in ins if h not in outs] + [(h, replace(h)) for h in outs]
    with model.hooks(hooks):
        return model.forward(toks)


# ---- plots ---------------------------------------------------------------------------------------
def density_histogram_figure(result: EvalResult | Sequence[float], title: str = "Latent density") -> Any:
    """Plotly bar chart of log10 firing frequency (dead latents shown as a separate bar)."""
    import plotly.graph_objects as go

    density = result.density if isinstance(result, EvalResult) else result
    h = log10_histogram(density)
    centres = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
    fig = go.Figure(
        [go.Bar(x=centres, y=h["counts"], name="alive"), go.Bar(x=[-7.5], y=h["dead"], name="dead")]
    )
    fig.update_layout(title=title, xaxis_title="log10 firing frequency", yaxis_title="latents", bargap=0.05)
    return fig


def frontier_figure(
    points: Sequence[tuple[str, EvalResult | dict[str, Any]]],
    x: str = "l0",
    y: str = "fvu",
    title: str = "Sparsity-fidelity frontier",
) -> Any:
    """Plotly scatter of one metric against another (default FVU vs L0), one labelled point per dictionary."""
    import plotly.graph_objects as go

    rows = [(label, r.to_dict() if isinstance(r, EvalResult) else r) for label, r in points]
    for label, r in rows:
        if r.get(x) is None or r.get(y) is None:
            raise InterpError(f"{label!r} has no {x!r} or {y!r} metric to plot.")
    fig = go.Figure(
        go.Scatter(
            x=[r[x] for _, r in rows],
            y=[r[y] for _, r in rows],
            mode="markers+text",
            text=[label for label, _ in rows],
            textposition="top center",
        )
    )
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y)
    return fig
