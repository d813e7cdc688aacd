"""EAP side by side with auto-circuit (PyPI ``auto-circuit``), on the same model, task and prompts.

auto-circuit is never installed in interp's environment: it lives in a side venv (made once, see ``SETUP``) and
runs in a subprocess executing ``PEER_SCRIPT``. That script loads the model's Hugging Face checkpoint with the
peer's own transformers, converts it into a TransformerLens 2.x ``HookedTransformer`` offline (TL's GPT-2 or
Llama weight converter, no hub, with the weight processing interp loaded the model with: by default folded
LayerNorms and value biases and a centred unembedding), checks its logits against the Hugging Face model (up
to each row's mean, which a centred unembedding removes) and, here, against interp's, builds
auto-circuit's factorized graph (q/k/v inputs separate, every position together, the last position's output)
and times ``mask_gradient_prune_scores(grad_function="logit", answer_function="avg_diff", mask_val=0)``,
which auto-circuit documents as exactly edge attribution patching.

Here interp builds the task (``interp.make_task``), scores its clean-run metric, and runs
``interp.find_circuit(model, task, "eap")``; the peer gets the same token ids (its JSON prompt format, not
shuffled), answers and wrong answers. auto-circuit's edges (``Resid Start``, ``A1.2``, ``A1.2.K``,
``MLP 0``, ``Resid End``) are mapped to interp's ids (``input``, ``a1.h2``, slot ``k``, ``m0``, ``logits``).
Reported: the logits agreement, the per-prompt metric agreement, the Spearman rank correlation of the signed
scores and of their absolute values over every edge, and the runtimes (median of ``--repeats``, in one table).

    python bench/circuits_peer.py                              # demo model, induction, 32 prompts
    python bench/circuits_peer.py --model runs/planted --seq-len 8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

import interp
from interp.circuits.components import ComponentGraph
from interp.circuits.evaluate import spearman
from interp.circuits.scoring import edge_matrix
from interp.circuits.tasks import check_task
from interp.model import DEMO_DIR, PROCESSING

SETUP = """\
python3 -m venv /tmp/peer-autocircuit/venv && cd /tmp/peer-autocircuit && echo "torch==2.13.0" > constraints.txt
venv/bin/pip install -c constraints.txt torch==2.13.0
venv/bin/pip install -c constraints.txt auto-circuit==1.0.1
venv/bin/pip install -c constraints.txt "transformer-lens<3"       # auto-circuit imports HookedTransformer (TL < 4)
venv/bin/pip install -c constraints.txt attrs "pyarrow<21"          # undeclared; pyarrow 21+ refuses numpy < 2"""
DEFAULT_VENV = "/tmp/peer-autocircuit/venv"
ENV_VAR = "INTERP_AUTOCIRCUIT_VENV"

PEER_SCRIPT = r"""
import json, sys, time, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
import torch as t
spec = json.loads(Path(sys.argv[1]).read_text())
t.set_num_threads(spec["threads"])
import importlib.metadata as md
from transformers import AutoModelForCausalLM
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
from auto_circuit.data import load_datasets_from_json
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
from auto_circuit.utils.graph_utils import patchable_model

from transformers import AutoConfig
c = AutoConfig.from_pretrained(spec["model_dir"])
rope = getattr(c, "rope_parameters", None) or {}
if "rope_theta" in rope:  # transformers 5's key; the peer's transformers 4 would read the default theta instead
    c.rope_theta = rope["rope_theta"]
hf = AutoModelForCausalLM.from_pretrained(spec["model_dir"], config=c).eval()
common = dict(n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=c.num_attention_heads,
              d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, default_prepend_bos=False, device="cpu", seed=0)
if c.model_type == "gpt2":
    cfg = HookedTransformerConfig(**common, d_head=c.n_embd // c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
                                  act_fn=c.activation_function, eps=c.layer_norm_epsilon, normalization_type="LN",
                                  positional_embedding_type="standard", original_architecture="GPT2LMHeadModel")
    convert = convert_gpt2_weights
elif c.model_type == "llama":  # rotary (halves, not adjacent pairs), RMSNorm, gated SiLU MLP
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        sys.exit(f"rope scaling {rope} is not converted here")
    kv = c.num_key_value_heads
    cfg = HookedTransformerConfig(**common, d_head=d_head, d_mlp=c.intermediate_size, act_fn="silu", eps=c.rms_norm_eps,
                                  normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=d_head,
                                  rotary_base=rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)),
                                  rotary_adjacent_pairs=False, final_rms=True, gated_mlp=True,
                                  n_key_value_heads=kv if kv != c.num_attention_heads else None,
                                  original_architecture="LlamaForCausalLM")
    convert = convert_llama_weights
else:
    sys.exit(f"model_type {c.model_type!r}: this script converts gpt2 and llama checkpoints")
model = HookedTransformer(cfg)
model.load_and_process_state_dict(convert(hf, cfg), refactor_factored_attn_matrices=False, **spec["processing"])
model.eval()
clean = t.tensor([p["clean"] for p in spec["prompts"]])
with t.no_grad():
    tl_logits, hf_logits = model(clean), hf(clean).logits
    last = tl_logits[:, -1]
    centred = lambda x: x - x.mean(-1, keepdim=True)  # a centred unembedding shifts each row by its mean
answers = t.tensor([p["answers"] for p in spec["prompts"]])
wrong = t.tensor([p["wrong_answers"] for p in spec["prompts"]])
metric = (last.gather(1, answers).mean(1) - last.gather(1, wrong).mean(1)).tolist()

model.set_use_attn_result(True); model.set_use_hook_mlp_in(True); model.set_use_split_qkv_input(True)
n = len(spec["prompts"])
data = Path(spec["work"]) / "prompts.json"
data.write_text(json.dumps({"prompts": spec["prompts"] * 2}))  # train = the first n, in order; test unused
train, _ = load_datasets_from_json(None, data, t.device("cpu"), prepend_bos=False, batch_size=spec["batch_size"],
                                   train_test_size=(n, n), shuffle=False, pad=False)
t0 = time.perf_counter()
pmodel = patchable_model(model, factorized=True, slice_output="last_seq", seq_len=None, separate_qkv=True,
                         device=t.device("cpu"))
setup_s = time.perf_counter() - t0
seconds = []
for _ in range(spec["repeats"]):
    t0 = time.perf_counter()
    scores = mask_gradient_prune_scores(model=pmodel, dataloader=train, official_edges=None, grad_function="logit",
                                        answer_function="avg_diff", mask_val=0.0)
    seconds.append(time.perf_counter() - t0)
    pmodel.zero_grad(set_to_none=True)
    for w in pmodel.dest_wrappers:
        w.patch_mask.grad = None
edges = {e.name: scores[e.dest.module_name][e.patch_idx].item() for e in pmodel.edges}
print(json.dumps({"versions": {p: md.version(p) for p in ("auto-circuit", "transformer-lens", "transformers", "torch")},
                  "max_abs_logit_diff_vs_hf": (centred(tl_logits) - centred(hf_logits)).abs().max().item(),
                  "metric": metric, "last_logits": last.tolist(),
                  "n_edges": len(pmodel.edges), "setup_s": setup_s, "seconds": seconds, "edges": edges}))
"""

_SRC = [(re.compile(r"Resid Start"), lambda m: "input"), (re.compile(r"A(\d+)\.(\d+)"), lambda m: f"a{m[1]}.h{m[2]}"),
        (re.compile(r"MLP (\d+)"), lambda m: f"m{m[1]}")]
_DST = [(re.compile(r"Resid End"), lambda m: ("logits", None)),
        (re.compile(r"A(\d+)\.(\d+)\.([QKV])"), lambda m: (f"a{m[1]}.h{m[2]}", m[3].lower())),
        (re.compile(r"MLP (\d+)"), lambda m: (f"m{m[1]}", None))]


def _match(rules: list[Any], text: str) -> Any:
    for pattern, build in rules:
        if m := pattern.fullmatch(text):
            return build(m)
    raise ValueError(f"unknown auto-circuit node {text!r}")


def interp_key(name: str) -> str:
    """auto-circuit's ``"A0.2->A1.3.K"`` as interp's edge key ``"a0.h2->a1.h3<k>"``."""
    src, dst = name.split("->")
    target, slot = _match(_DST, dst)
    return f"{_match(_SRC, src)}->{target}" + (f"<{slot}>" if slot else "")


def run_peer(venv: Path, spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        spec = {**spec, "work": work}
        (Path(work) / "spec.json").write_text(json.dumps(spec))
        (Path(work) / "peer.py").write_text(PEER_SCRIPT)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "OMP_NUM_THREADS": str(spec["threads"])}
        command = [str(venv / "bin" / "python"), str(Path(work) / "peer.py"), str(Path(work) / "spec.json")]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"auto-circuit failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="demo or a local GPT-2 or Llama checkpoint directory")
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--venv", default=os.environ.get(ENV_VAR, DEFAULT_VENV))
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    venv = Path(args.venv)
    if not (venv / "bin" / "python").exists():
        raise SystemExit(f"No auto-circuit venv at {venv}. Make one with:\n{SETUP}")
    torch.set_num_threads(args.threads)
    model = interp.load_model(args.model)
    model_dir = DEMO_DIR if args.model == "demo" else Path(args.model)
    task = interp.make_task("induction", model, n_prompts=args.n_prompts, seed=0, seq_len=args.seq_len)
    base = check_task(model, task, args.n_prompts)
    assert bool((task.clean_pos == task.seq_len - 1).all()), "auto-circuit reads the last position"
    rows = zip(task.clean.tolist(), task.corrupted.tolist(), task.answers.tolist(), task.wrong.tolist())
    prompts = [{"clean": c, "corrupt": x, "answers": [a for a in ans if a >= 0],
                "wrong_answers": [w for w in wr if w >= 0]} for c, x, ans, wr in rows]
    load = os.getloadavg()[0]
    ours = [interp.find_circuit(model, task, "eap", evaluate=False, batch_size=args.n_prompts)
            for _ in range(args.repeats)]
    processing = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
                  "fold_value_biases": False, **PROCESSING[model.info.processing]}
    if processing.pop("no_processing", False):
        processing = {k: False for k in processing}
    peer = run_peer(venv, {"model_dir": str(model_dir), "prompts": prompts, "repeats": args.repeats,
                           "threads": args.threads, "batch_size": args.n_prompts, "processing": processing})
    ours += [interp.find_circuit(model, task, "eap", evaluate=False, batch_size=args.n_prompts)
             for _ in range(args.repeats)]  # after the peer too, so both see the same load
    load_after = os.getloadavg()[0]
    report(model, task, base, ours, peer, args, (load, load_after))


def report(model: Any, task: Any, base: Any, ours: list[Any], peer: dict[str, Any], args: argparse.Namespace,
           load: tuple[float, float]) -> None:
    cg = ComponentGraph.of(model)
    index = cg.edge_index().tolist()
    mine = edge_matrix(cg, ours[0])[cg.valid]  # in edge_index order (tests/test_circuits_components.py)
    theirs_by_key = {interp_key(name): score for name, score in peer["edges"].items()}
    keys = [f"{cg.src_names[s]}->{cg.dst_names[d][0]}" + (f"<{cg.dst_names[d][1]}>" if cg.dst_names[d][1] else "")
            for s, d in index]
    missing = sorted(set(keys) ^ set(theirs_by_key))
    if missing:
        raise SystemExit(f"edge sets differ ({len(missing)} edges), e.g. {missing[:5]}")
    theirs = torch.tensor([theirs_by_key[k] for k in keys], dtype=torch.float64)
    with torch.no_grad():
        logits = model.logits_at(task.clean, task.positions("clean")).double().cpu()
    logit_gap = (torch.tensor(peer["last_logits"], dtype=torch.float64) - logits).abs().max().item()
    if logit_gap > 1e-3 * max(1.0, logits.abs().max().item()):
        raise SystemExit(f"The converted HookedTransformer does not compute interp's logits (max |diff| "
                         f"{logit_gap:.2e}); the scores would not be comparable.")
    metric_gap = (torch.tensor(peer["metric"], dtype=torch.float64) - base.m_clean.double()).abs().max().item()
    ratio = (theirs.abs().sum() / mine.abs().sum()).item()
    ours_s = statistics.median(g.metadata["runtime_s"] for g in ours)
    peer_s = statistics.median(peer["seconds"])
    figures = {
        "versions": peer["versions"], "n_edges": len(keys), "n_prompts": task.n, "seq_len": task.seq_len,
        "max_abs_logit_diff_tl_vs_hf": peer["max_abs_logit_diff_vs_hf"], "max_abs_logit_diff_tl_vs_interp": logit_gap,
        "max_abs_metric_diff_vs_interp": metric_gap,
        "spearman_signed": spearman(mine, theirs), "spearman_signed_negated": spearman(mine, -theirs),
        "spearman_abs": spearman(mine.abs(), theirs.abs()),
        "max_abs_score_diff_negated": (mine + theirs).abs().max().item(), "max_abs_score": mine.abs().max().item(),
        "scale_ratio": ratio,
        "interp_eap_s": ours_s, "autocircuit_eap_s": peer_s, "autocircuit_setup_s": peer["setup_s"],
        "load": list(load), "threads": args.threads,
    }
    print(json.dumps(figures, indent=1))
    print(f"\n{args.model}, induction, {task.n} prompt pairs of {task.seq_len} tokens, {len(keys)} edges; "
          f"torch threads {args.threads}; load average {load[0]:.1f} before, {load[1]:.1f} after\n")
    print("| | interp | auto-circuit " + peer["versions"]["auto-circuit"] + " |\n|---|---|---|")
    print(f"| EAP runtime (median of {args.repeats}) | {ours_s:.3f} s | {peer_s:.3f} s "
          f"(+ {peer['setup_s']:.2f} s patchable_model) |")
    print(f"| model | interp.load_model | HookedTransformer (TL {peer['versions']['transformer-lens']}), "
          f"logits vs HF max |diff| {peer['max_abs_logit_diff_vs_hf']:.1e} |")
    print(f"| answer-position logits vs interp's, max |diff| | | {logit_gap:.1e} |")
    print(f"| clean metric vs interp's, max |diff| per prompt | | {metric_gap:.1e} |")
    print(f"| Spearman of |scores| | | {figures['spearman_abs']:.4f} |")
    print(f"| Spearman of signed scores (auto-circuit's negated) | | {figures['spearman_signed_negated']:.4f} |")
    print(f"| max |interp + auto-circuit| over edges (largest |score| {figures['max_abs_score']:.3g}) | | "
          f"{figures['max_abs_score_diff_negated']:.1e} |")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
