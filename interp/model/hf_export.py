"""Writing a finetuned ``Model`` back out as a Hugging Face checkpoint.

``load_model`` runs the bridge in TransformerLens compatibility mode, whose weights are processed:
LayerNorm scales and shifts are folded into the next linear map, writing weights are centred, value
biases are folded into the output bias, the unembedding is centred, and fused QKV projections (GPT-2's
``c_attn``) are split into q/k/v copies that the forward pass uses while the fused tensor goes stale.
A model finetuned in that form is still an ordinary checkpoint of the same architecture if it is written
with (i) the in-block weights as the bridge holds them (folded LayerNorms are then the identity), (ii)
fused QKV rebuilt from the trained q/k/v, and (iii) the final norm and output embedding taken from the
original checkpoint, untied from the input embedding -- unless the bridge's unembedding bias ``b_U``
(the folded final-norm bias, a buffer) is constant over the vocabulary, in which case the trained
final norm and unembedding are written as they are (see ``Model.head_exportable``). The first case needs
the final norm and unembedding frozen during finetuning: a non-constant b_U cannot be expressed in
GPT-2's bias-free lm_head. Loading the written
checkpoint with ``load_model`` processes it again, which leaves it unchanged up to a per-token constant
on the logits. :func:`save_hf_model` checks that on real tokens and raises if it does not hold.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError
from interp.io import atomic_directory
from interp.model.model import DEMO_DIR, Model, load_model

_IN_BLOCK = re.compile(r"\.\d+\.")


def save_hf_model(model: Model, path: str | Path, check_tokens: torch.Tensor, original: str | None = None) -> Path:
    """Write ``model``'s current weights to directory ``path`` (safetensors + config + tokenizer).

    ``original``: the checkpoint the model was loaded from (default ``model.info.name``), for the final
    norm and output embedding. The written model is reloaded and its next-token log-probabilities on
    ``check_tokens`` (n, T) must match the live model's to 1e-3, else InterpError. Written beside
    ``path`` and renamed into place.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    source = _source(original or model.info.name)
    reference = AutoModelForCausalLM.from_pretrained(source)
    state = _export_state(model, reference)
    config = reference.config
    config.tie_word_embeddings = False
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(state)  # strict: a weight we could not map raises
    with atomic_directory(path) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        with torch.no_grad():
            tokens = check_tokens.to(model.device)
            new = load_model(str(tmp), device=str(model.device)).forward(tokens).float().log_softmax(-1)
            gap = (new - model.forward(tokens).float().log_softmax(-1)).abs().max().item()
        if gap > 1e-3:
            raise InterpError(
                f"The exported {model.info.architecture} differs from the finetuned model (max log-prob gap "
                f"{gap:.2e}); exporting this architecture's processed weights is not supported."
            )
    return path


def _source(name: str) -> str:
    if name == "demo":
        return str(DEMO_DIR)
    return name


def _export_state(model: Model, reference: Any) -> dict[str, torch.Tensor]:
    """HF state dict of the live (processed) weights, mapped as the module docstring describes."""
    wanted = reference.state_dict()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.bridge.original_model.state_dict().items():
        clean = name.replace("._original_component", "")
        if clean in wanted and clean not in state:
            state[clean] = tensor.detach().cpu().clone().contiguous()
    state.update(_fused_qkv(model))
    out_names = {n for n, _ in reference.get_output_embeddings().named_parameters(prefix=_module_name(
        reference, reference.get_output_embeddings()))}
    if model.head_exportable:
        return {n: state[n] for n in wanted}
    for mod_name, module in reference.named_modules():
        if isinstance(module, torch.nn.LayerNorm) and not _IN_BLOCK.search(f".{mod_name}."):
            state.update({f"{mod_name}.{n}": p.detach().clone() for n, p in module.named_parameters()})
    state.update({n: wanted[n].clone() for n in out_names})
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise InterpError(f"Cannot export the finetuned {model.info.architecture}: no weights for {missing[:5]}.")
    return {n: state[n] for n in wanted}


def _module_name(root: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(n for n, m in root.named_modules() if m is module)


def _fused_qkv(model: Model) -> dict[str, torch.Tensor]:
    """HF name -> fused QKV weight/bias rebuilt from the bridge's split q/k/v linears, in GPT-2's Conv1D
    layout: weight (d_model, 3 * d_model) = [Wq | Wk | Wv], bias = [bq | bk | bv]."""
    names = {id(m): n.replace("._original_component", "") for n, m in model.bridge.original_model.named_modules()}
    out: dict[str, torch.Tensor] = {}
    for module in model.bridge.modules():
        split = getattr(module, "split_qkv_matrix", None)
        if split is None or not hasattr(module, "q"):
            continue
        if getattr(split, "__name__", "") != "_default_split_qkv_matrix":
            raise InterpError(f"Cannot export {model.info.architecture}: its fused QKV uses a custom split.")
        prefix = f"{names[id(module.original_component)]}.{module.submodules['qkv'].name}"
        linears = [getattr(module, part).original_component for part in ("q", "k", "v")]
        out[f"{prefix}.weight"] = torch.cat([lin.weight.detach().T for lin in linears], dim=1).cpu().contiguous()
        if linears[0].bias is not None:
            out[f"{prefix}.bias"] = torch.cat([lin.bias.detach() for lin in linears]).cpu().contiguous()
    return out
