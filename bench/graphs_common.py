"""What ``bench/graphs.py`` and ``bench/graphs_scaling_peer.py`` share: the GPT-2-small-shaped model, stdlib tokens,
transcoders written in circuit-tracer's format, circuit-tracer's side of the set-up, and the adjacency comparison."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def gpt2_small_shaped(out: Path, n_layers: int, n_ctx: int) -> Path:
    """A random GPT-2-small-shaped checkpoint with the demo model's tokenizer, saved to ``out``."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from interp.model import DEMO_DIR

    tok = AutoTokenizer.from_pretrained(DEMO_DIR)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layers, n_embd=768, n_head=12, vocab_size=len(tok), n_positions=n_ctx,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def readable_by_peer(model_dir: Path) -> None:
    """Name the tokenizer class in ``tokenizer_config.json``: transformers 4 (circuit-tracer's venv) needs it."""
    config_path = model_dir / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()),
                                       "tokenizer_class": "PreTrainedTokenizerFast"}))


def write_peer_transcoders(ts, out: Path, scan: str) -> Path:
    """Per-layer ReLU/JumpReLU transcoders of ``ts`` in circuit-tracer's format (one safetensors file per layer:
    ``W_enc`` (n, d_model), ``b_enc``, ``W_dec`` (n, d_model), ``b_dec``; ``config.yaml`` with local paths, read
    by its ``load_transcoders``); features read ``ln2.hook_normalized`` as interp's do. Returns the config's path."""
    import yaml
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for layer in ts.layers:  # circuit-tracer's features read x W_enc^T + b_enc
        W, b = ts.encoder(layer)
        weights = {"W_enc": W.T, "b_enc": b, "W_dec": ts.decoder(layer, layer), "b_dec": ts.bias(layer)}
        paths.append(out / f"layer_{layer}.safetensors")
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(paths[-1]))
    (out / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "scan": scan, "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out", "transcoders": [str(p) for p in paths]}))
    return out / "config.yaml"


def stdlib_tokens(model, n: int) -> torch.Tensor:
    """(n,) BOS then the first n - 1 tokens of stdlib source."""
    import inspect

    text = "".join(inspect.getsource(m) for m in (inspect, argparse, json))
    ids = model.to_tokens(text, truncate=False)[0]
    if len(ids) < n:
        raise SystemExit(f"only {len(ids)} stdlib tokens; ask for fewer")
    return ids[:n]


CT_SETUP = r"""
import json, re, sys, time, torch, yaml
from pathlib import Path


def replacement_model(model_dir, transcoders_config):
    # circuit-tracer's ReplacementModel of a local GPT-2 checkpoint with local transcoders, offline
    from transformers import GPT2LMHeadModel
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from circuit_tracer import ReplacementModel
    from circuit_tracer.utils.hf_utils import load_transcoders
    tcs = load_transcoders(yaml.safe_load(Path(transcoders_config).read_text()), device=torch.device("cpu"),
                           lazy_decoder=False)
    hf = GPT2LMHeadModel.from_pretrained(model_dir)
    c = hf.config
    cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
                                  d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new",
                                  normalization_type="LN", tokenizer_name=model_dir, model_name="gpt2-shaped",
                                  default_prepend_bos=True, device="cpu", original_architecture="GPT2LMHeadModel")
    rm = ReplacementModel.from_config(cfg, tcs, backend="transformerlens")

    def rename(mm):
        return mm.group(1) + (".old_mlp." if "mlp" in mm.group(1) else ".old_unembed.")

    sd = {re.sub(r"^(blocks\.\d+\.mlp|unembed)\.", rename, k): v for k, v in convert_gpt2_weights(hf, rm.cfg).items()}
    rm.load_state_dict(sd, strict=False)
    del hf
    return rm
"""


def compare(model, ts, tokens, ct: dict, A_ct: torch.Tensor, ours_s: float) -> None:
    """Max relative difference between the two adjacencies on the entries both have, by source kind."""
    from interp.circuits.attribution import Linearised, Target, active_nodes
    from interp.circuits.replacement import trace

    tr = trace(model, tokens, ts)
    nodes = active_nodes(model, tr)
    engine = Linearised(model, tr, nodes)
    ours_index = {tuple(f): i for i, f in enumerate(nodes.features.tolist())}
    feats = [tuple(f) for f in ct["active_features"]]
    P, L, n_f = len(tokens), ct["n_layers"], len(feats)
    missing = [f for f in feats if f not in ours_index]
    targets = [Target("feature", *f) for f in feats] + [Target("logit", L, P - 1, t) for t in ct["logit_tokens"]]
    rows = engine.rows(targets)
    cols = [ours_index[f] for f in feats] + [nodes.n_features + i for i in range(L * P)]
    cols += [nodes.token_index(p) for p in range(P)]
    ours = rows.edges[:, cols]
    engine.embed = tr.acts["hook_embed"]  # circuit-tracer's embedding nodes hold the token embedding alone
    ours[:, -P:] = engine.rows(targets).edges[:, cols[-P:]]
    n_src = n_f + L * P + P  # circuit-tracer's square matrix: rows [features, errors, tokens, logits]
    theirs = A_ct[list(range(n_f)) + [n_src + k for k in range(len(ct["logit_tokens"]))], :n_src].float()
    not_bos = [n_f + layer * P + p for layer in range(L) for p in range(1, P)]
    kinds = {"feature sources": list(range(n_f)), "error sources after BOS": not_bos,
             "error sources at BOS": [n_f + layer * P for layer in range(L)],
             "embedding sources (token embedding)": list(range(n_f + L * P, len(cols)))}
    scale = theirs.abs().max()
    print(f"nodes: circuit-tracer {n_f} features (BOS features zeroed), interp {nodes.n_features}; "
          f"{len(missing)} of theirs not active in interp; logits {ct['logit_tokens']} vs "
          f"{nodes.logit_tokens.tolist()}")
    print(f"attribution time: circuit-tracer {ct['seconds']:.2f} s, interp {ours_s:.2f} s (whole graph call)")
    for name, which in kinds.items():
        a, b = ours[:, which], theirs[:, which]
        big = b.abs() > 1e-3 * scale
        rel = ((a - b).abs()[big] / b.abs()[big]).max() if big.any() else torch.tensor(0.0)
        print(f"  {name}: {int(big.sum())} entries above 1e-3 of the largest ({float(scale):.3g}); max relative "
              f"difference {float(rel):.2e}; max abs difference {float((a - b).abs().max()):.2e} (all entries), "
              f"{float((a - b).abs().max() / scale):.2e} of the largest")
