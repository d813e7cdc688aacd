"""What keeps an attribution graph's memory linear in the prompt (issue 12, item 4): the trace of a model with
learned positions runs on the module path (fused attention, no n_heads x P x P pattern) and records what the
bridge records; rows computed in position-sorted batches equal one pass over every target."""

from __future__ import annotations

import torch
from transcoders import clt

from interp.circuits.attribution import Linearised, Target, active_nodes
from interp.circuits.graph_api import _compute_rows
from interp.circuits.replacement import TranscoderSet, trace

TORCH_THREADS = 1  # see conftest.py
PROMPT = "def add(a, b):\n    return a + b\n\nclass Point:\n    pass\n"


def test_the_lean_trace_runs_on_the_module_path_and_equals_the_bridge(tiny_model):
    ts = TranscoderSet([clt(tiny_model.info.fingerprint)], tiny_model)
    lean = trace(tiny_model, PROMPT, ts, patterns=False)
    hooks = list(lean.acts)
    assert {"ln_final.hook_scale", "blocks.1.ln2.hook_scale", "blocks.0.attn.hook_v", "hook_pos_embed"} <= set(hooks)
    assert tiny_model.capture_path(hooks) == "modules"
    bridge = tiny_model.capture(lean.tokens[None], hooks, path="bridge").acts
    for h in hooks:
        torch.testing.assert_close(lean.acts[h], bridge[h][0].float(), rtol=1e-5, atol=2e-6, msg=h)
    # with patterns the trace needs the bridge (the module path's fused attention never forms them)
    assert tiny_model.capture_path([*hooks, "blocks.0.attn.hook_pattern"]) == "bridge"


def test_rows_in_position_batches_equal_one_pass(tiny_model):
    ts = TranscoderSet([clt(tiny_model.info.fingerprint)], tiny_model)
    tr = trace(tiny_model, PROMPT, ts, patterns=False)
    nodes = active_nodes(tiny_model, tr, max_n_logits=3)
    engine = Linearised(tiny_model, tr, nodes)
    targets = [Target("feature", int(l), int(p), int(f)) for l, p, f in nodes.features]
    targets += [Target("logit", tr.n_layers, nodes.n_positions - 1, int(t)) for t in nodes.logit_tokens]
    targets = targets[::-1]  # out of position order: the batches sort them and put them back
    whole = engine.rows(targets)

    class Bar:
        def update(self, n: int) -> None:
            self.n = getattr(self, "n", 0) + n

    bar = Bar()
    batched = _compute_rows(engine, targets, 5, bar)  # type: ignore[arg-type]
    assert bar.n == len(targets) > 10
    torch.testing.assert_close(batched.edges, whole.edges, rtol=1e-4, atol=1e-5)  # float32 sums
    torch.testing.assert_close(batched.bias, whole.bias, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.values, whole.values)
