"""Booting transformer-lens's ``TransformerBridge``, and finding checkpoints on disk or on the hub.

The bridge runs every architecture transformer-lens supports, with every hook; interp boots it only when a
model needs it (see ``interp.model.model.Model``), because importing transformer-lens and booting the bridge
costs seconds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from interp.errors import InterpError
from interp.model.info import ModelInfo, fingerprint
from interp.model.weights import PROCESSING

# Hooks the bridge only exposes after a flag is switched on; switching it on costs a little speed.
FLAGGED_HOOKS = {
    "hook_mlp_in": "set_use_hook_mlp_in",
    "hook_attn_in": "set_use_attn_in",
    "hook_q_input": "set_use_split_qkv_input",
    "hook_k_input": "set_use_split_qkv_input",
    "hook_v_input": "set_use_split_qkv_input",
    "attn.hook_result": "set_use_attn_result",
}


def boot(source: str, name: str, device: str | torch.device, dtype: torch.dtype, processing: str) -> Any:
    """The bridge for ``source`` (a directory or hub name), processed, in eval mode, with frozen weights."""
    from transformer_lens.model_bridge import TransformerBridge

    try:
        bridge = TransformerBridge.boot_transformers(source, device=str(device), dtype=dtype)
    except OSError as e:
        raise InterpError(
            f"Could not load {name!r} ({e}). If you are offline, pass a local checkpoint directory "
            "with --model /path/to/dir."
        ) from e
    except ValueError as e:
        raise InterpError(f"Could not load {name!r}: {e}") from e
    bridge.enable_compatibility_mode(disable_warnings=True, **PROCESSING[processing])
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return bridge


def bridge_info(name: str, bridge: Any, processing: str) -> ModelInfo:
    """The :class:`ModelInfo` of a booted bridge."""
    cfg = bridge.cfg
    hf_cfg = bridge.original_model.config
    tok = bridge.tokenizer
    return ModelInfo(
        name=name,
        architecture=(hf_cfg.architectures or [type(bridge.original_model).__name__])[0],
        d_model=int(cfg.d_model),
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        bos_token_id=tok.bos_token_id,
        processing=processing,
        fingerprint=fingerprint(hf_cfg.to_dict(), tok.get_vocab(), processing),
    )


def hub_name(name: str) -> str:
    """Map TransformerLens aliases (``gpt2-small``) to hub names; pass others through."""
    try:
        from transformer_lens.supported_models import get_official_model_name

        return get_official_model_name(name)
    except Exception:  # an unknown alias is simply a hub name
        return name


def cached_snapshot(name: str) -> Path | None:
    """The directory of hub model ``name`` in the Hugging Face cache, if its config is there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:
        return None
    return Path(found).parent if isinstance(found, str) else None


def check_hub_reachable(name: str) -> None:
    """Fail in milliseconds, not after minutes of retries, when the hub cannot be reached."""
    hub = hub_name(name)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if cached_snapshot(hub) is not None:
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    reachable = False
    if not offline:
        try:
            socket.getaddrinfo(host, 443)
            reachable = True
        except OSError:
            reachable = False
    if not reachable:
        raise InterpError(
            f"Cannot load {name!r}: it is not a local directory, not in the Hugging Face cache, and the hub "
            f"({host}) cannot be reached (offline?). Download it on a machine with network "
            f"(e.g. `huggingface-cli download {hub} --local-dir ./{hub.split('/')[-1]}`) and pass the "
            f"directory: --model ./{hub.split('/')[-1]}. Or use --model demo."
        )
