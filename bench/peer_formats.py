"""SAELens and sparsify exports used the way those libraries' users use them, each in its own virtualenv.

interp trains a TopK SAE on the demo model (a store of ``--hook``), exports it to SAELens and to sparsify, and
writes reference tokens with interp's activations and codes for them. Then, in each peer's venv (set up as
``bench/peers.py`` says; absent venvs are skipped):

- SAELens: ``SAE.load_from_disk``; the ``cfg.metadata`` fields (context_size, hook_name, prepend_bos,
  model_name, model_from_pretrained_kwargs); the model loaded the way ``interp_model_loading`` says
  (``TransformerBridge.boot_transformers(model_name)`` + ``enable_compatibility_mode(**kwargs)``); its activations
  at ``hook_name`` and the SAE's codes against interp's; and ``ActivationsStore.from_sae(model, sae, dataset)``
  on an in-memory dataset, offline, with the context size taken from the cfg.
- sparsify: ``SparseCoder.load_many(run_dir)`` (the hookpoint is the directory name); the Hugging Face model's
  module at that hookpoint, hooked as sparsify hooks it; its output and the coder's codes against interp's.

Usage: python bench/peer_formats.py [--hook blocks.1.hook_resid_post] [--saelens-venv DIR] [--sparsify-venv DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from bench.peers import venv_for
from interp.activations import CacheConfig, cache_activations
from interp.formats import export_dictionary, import_dictionary
from interp.io import save_tensors
from interp.model import DEMO_DIR, load_model
from interp.training import TrainConfig, train_dictionary

SAELENS = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from datasets import Dataset
from safetensors.torch import load_file
from sae_lens import SAE
from sae_lens.training.activations_store import ActivationsStore
from transformer_lens.model_bridge import TransformerBridge

path, ref = sys.argv[1], load_file(sys.argv[2])
sae = SAE.load_from_disk(path)
m = sae.cfg.metadata
model = TransformerBridge.boot_transformers(m.model_name, device="cpu")
model.enable_compatibility_mode(disable_warnings=True, **m.model_from_pretrained_kwargs)
_, cache = model.run_with_cache(ref["tokens"], names_filter=[m.hook_name])
acts = cache[m.hook_name].reshape(-1, sae.cfg.d_in)
codes = sae.encode(acts)
store = ActivationsStore.from_sae(model, sae, dataset=Dataset.from_dict({"text": [json.loads(sys.argv[3])] * 64}),
                                  store_batch_size_prompts=4, n_batches_in_buffer=2, train_batch_size_tokens=256,
                                  total_tokens=10**5)
batch = store.next_batch()
print(json.dumps({
    "class": type(sae).__name__, "context_size": m.context_size, "hook_name": m.hook_name,
    "prepend_bos": m.prepend_bos, "model_name": m.model_name, "kwargs": m.model_from_pretrained_kwargs,
    "act_err": float((acts - ref["acts"]).abs().max()), "code_err": float((codes - ref["codes"]).abs().max()),
    "store_context_size": store.context_size, "store_batch": list(batch.shape),
}))
"""

SPARSIFY = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file
from sparsify import SparseCoder
from transformers import AutoModelForCausalLM

run, model_dir, ref = sys.argv[1], sys.argv[2], load_file(sys.argv[3])
coders = SparseCoder.load_many(run, local=True)
(point, coder), = coders.items()
hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
seen = {}
def hook(module, inputs, output):
    seen["out"] = output[0] if isinstance(output, tuple) else output
hf.base_model.get_submodule(point).register_forward_hook(hook)
with torch.no_grad():
    hf(ref["tokens"])
    acts = seen["out"].reshape(-1, coder.d_in)
    enc = coder.encode(acts)
codes = torch.zeros(acts.shape[0], coder.num_latents).scatter(1, enc.top_indices, enc.top_acts)
print(json.dumps({"hookpoint": point, "act_err": float((acts - ref["acts"]).abs().max()),
                  "code_err": float((codes - ref["codes"]).abs().max())}))
"""


def reference(work: Path, hook: str, n_tokens: int) -> tuple[Path, str]:
    """Train and export the SAE; write the reference tokens, activations and codes. Returns (sae dir, a text)."""
    model = load_model("demo")
    store = cache_activations(CacheConfig(model="demo", hooks=(hook,), n_tokens=n_tokens), work / "store", model=model,
                              progress=False)
    cfg = TrainConfig(architecture="topk", hook=hook, expansion=4, k=16, n_tokens=4 * n_tokens, batch_size=1024,
                      name="sae")
    path = train_dictionary(cfg, store, work / "saes", progress=False).dictionaries[0]
    d = import_dictionary(path, "interp")
    export_dictionary(d, work / "saelens", "saelens")
    export_dictionary(d, work / "sparsify", "sparsify")
    text = "def mean(values):\n    total = sum(values)\n    return total / len(values)\n" * 3
    tokens = torch.tensor([[model.info.bos_token_id, *model.tokenizer(text)["input_ids"]][:64]])
    acts = model.capture(tokens, [hook]).acts[hook].reshape(-1, d.cfg.d_in)
    with torch.no_grad():
        codes = d.encode(acts)
    save_tensors(work / "ref.safetensors", {"tokens": tokens, "acts": acts, "codes": codes})
    return path, text


def run_peer(python: Path, script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--n-tokens", type=int, default=32768)
    p.add_argument("--saelens-venv")
    p.add_argument("--sparsify-venv")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, text = reference(work, args.hook, args.n_tokens)
        print("SAELens cfg.metadata:", json.dumps(json.loads((work / "saelens" / "cfg.json").read_text())["metadata"],
                                                  indent=1))
        for name, script, argv in [
            ("saelens", SAELENS, [str(work / "saelens"), str(work / "ref.safetensors"), json.dumps(text)]),
            ("sparsify", SPARSIFY, [str(work / "sparsify"), str(DEMO_DIR), str(work / "ref.safetensors")]),
        ]:
            python = venv_for(name, getattr(args, f"{name}_venv")) / "bin" / "python"
            if not python.exists():
                print(f"{name}: skipped (no venv at {python.parent.parent}; setup in bench/peers.py)")
                continue
            print(f"{name}:", json.dumps(run_peer(python, script, *argv)))


if __name__ == "__main__":
    main()
