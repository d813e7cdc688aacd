"""Node and edge methods on the demo model: each against a reference computation or an identity it must satisfy."""

from __future__ import annotations

import pytest
import torch

from interp.circuits.acdc import AUTO_THRESHOLDS, acdc
from interp.circuits.api import find_circuit
from interp.circuits.components import ComponentGraph
from interp.circuits.eap import eap, eap_ig, eap_ig_activations
from interp.circuits.evaluate import spearman
from interp.circuits.generators import induction_task
from interp.circuits.patching import activation_patching, attribution_patching, edge_activation_patching
from interp.circuits.tasks import Task, check_task
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py


@pytest.fixture(scope="module")
def setup(demo_model):
    task = induction_task(demo_model, n_prompts=12, seq_len=6, seed=1)
    return task, check_task(demo_model, task)


def _metric_with(model, task: Task, hooks) -> float:
    with model.hooks(hooks):
        logits = model.forward(task.clean)[:, -1]
    return float((logits.gather(1, task.answers) - logits.gather(1, task.wrong)).mean())


def test_activation_patching_matches_a_hand_patch_and_batches_exactly(demo_model, setup):
    task, base = setup
    grabbed = {}
    with demo_model.hooks([("blocks.1.attn.hook_z", lambda z, hook: grabbed.setdefault("z", z.clone()))]):
        demo_model.forward(task.corrupted)

    def patch_head(z, hook):
        z = z.clone()
        z[:, :, 2] = grabbed["z"][:, :, 2]
        return z

    want = _metric_with(demo_model, task, [("blocks.1.attn.hook_z", patch_head)]) - float(base.m_clean.mean())
    wide = activation_patching(demo_model, task, base, components=("heads", "mlps", "resid"), batch_size=12)
    narrow = activation_patching(demo_model, task, base, components=("heads",), batch_size=5, max_rows=10)
    assert wide.heads[1, 2].item() == pytest.approx(want, abs=1e-5)
    assert torch.allclose(wide.heads, narrow.heads, atol=1e-5)
    # the second copy is the same in clean and corrupted prompts: patching layer 0's input there changes nothing
    assert wide.resid[0, task.seq_len // 2 + 1 :].abs().max() < 1e-6
    down = activation_patching(demo_model, task, base, direction="denoising")
    assert down.mlps.abs().max() > 0 and not torch.allclose(down.heads, -wide.heads)


def test_attribution_patching_tracks_activation_patching(demo_model, setup):
    task, base = setup
    exact = activation_patching(demo_model, task, base, components=("heads", "mlps"))
    approx = attribution_patching(demo_model, task, base, components=("heads", "mlps", "resid"))
    a = torch.cat([exact.heads.flatten(), exact.mlps])
    b = torch.cat([approx.heads.flatten(), approx.mlps])
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    assert approx.resid is not None and approx.resid.shape == (demo_model.info.n_layers, task.seq_len)


def test_eap_rows_are_attribution_patching(demo_model, setup):
    """d m / d out_u is the sum of d m / d in_v over u's destinations, so EAP's row sums are node attributions."""
    task, base = setup
    cg = ComponentGraph.of(demo_model)
    scores = eap(demo_model, task, base, batch_size=5)
    nodes = attribution_patching(demo_model, task, base)
    rows = scores.sum(1)
    heads = rows[[cg.head_src(layer) + h for layer in range(2) for h in range(4)]].view(2, 4)
    assert torch.allclose(heads, nodes.heads, atol=1e-5)
    assert torch.allclose(rows[[cg.mlp_src(0), cg.mlp_src(1)]], nodes.mlps, atol=1e-5)
    assert scores[~cg.valid].abs().max() == 0


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (40,), generator=gen).float(), torch.randn(40, generator=gen)
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)


def test_eap_ranks_edges_like_exact_edge_patching(demo_model, setup):
    task, base = setup
    cg = ComponentGraph.of(demo_model)
    exact = edge_activation_patching(demo_model, task, base, max_rows=60)
    approx = eap(demo_model, task, base)
    assert exact[~cg.valid].abs().max() == 0 and exact[cg.valid].abs().max() > 0
    assert spearman(approx[cg.valid].abs(), exact[cg.valid].abs()) > 0.9


def test_eap_ig_converges_to_the_patching_effect(demo_model, setup):
    """Summed over the input's edges, EAP-IG is a Riemann sum of m(clean) - m(corrupted)."""
    task, base = setup
    target = -base.gap
    errors = [abs(float(eap_ig(demo_model, task, base, steps=s)[0].sum()) - target) for s in (4, 32)]
    assert errors[1] < errors[0] / 4 and errors[1] < 0.01 * abs(target)
    one_step = eap_ig(demo_model, task, base, steps=1)
    at_corrupted = eap(demo_model, task, base)  # k = 0 is the corrupted end, not the clean one
    assert not torch.allclose(one_step, at_corrupted, atol=1e-4)


def test_eap_ig_activations_converges_per_group(demo_model, setup):
    task, base = setup
    cg = ComponentGraph.of(demo_model)
    effect = activation_patching(demo_model, task, base).mlps[0].item()  # m(MLP0 patched) - m(clean)
    errors = [abs(float(eap_ig_activations(demo_model, task, base, steps=s)[cg.mlp_src(0)].sum()) - effect)
              for s in (8, 64)]  # about 1/steps from 8 steps on (2 and 4 steps are not yet in that regime)
    assert errors[1] < errors[0] / 4 and errors[1] < 0.05 * abs(effect)


def test_acdc_is_deterministic_for_a_seed(demo_model, setup, caplog):
    task, base = setup
    small = task.subset(range(6))
    thresholds = (1e-4, 1e-3, 1e-2)
    with caplog.at_level("WARNING", logger="interp.circuits.acdc"):
        a = acdc(demo_model, small, base._replace(clean_final=base.clean_final[:6], m_clean=base.m_clean[:6]),
                 thresholds=thresholds, seed=0)
    # several edges of the demo's induction circuit matter more than 0.01 of KL: they tie at the top, and ACDC says so
    top = int(a.kept[-1].sum())
    assert top > 1 and f"{top} edges survive the largest threshold 0.01" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="interp.circuits.acdc"):
        wide = acdc(demo_model, small, base._replace(clean_final=base.clean_final[:6], m_clean=base.m_clean[:6]),
                    thresholds=(1e-2, 1e3), seed=0)
    assert int(wide.kept[-1].sum()) <= 1 and "survive the largest threshold" not in caplog.text
    b = acdc(demo_model, small, base._replace(clean_final=base.clean_final[:6], m_clean=base.m_clean[:6]),
             thresholds=thresholds, seed=0)
    assert torch.equal(a.kept, b.kept) and torch.equal(a.scores, b.scores)
    caplog.clear()
    with caplog.at_level("WARNING", logger="interp.circuits.acdc"):
        ext = acdc(demo_model, small, base._replace(clean_final=base.clean_final[:6], m_clean=base.m_clean[:6]),
                   thresholds=thresholds, seed=0, extend=True)
    # the sweep goes on past 0.01 in the same pattern until one edge is left, and changes nothing below
    assert ext.thresholds[:4] == (*thresholds, 0.03) and int(ext.kept[-1].sum()) <= 1
    assert "survive the largest threshold" not in caplog.text
    assert torch.equal(ext.kept[:3], a.kept) and len(ext.thresholds) == len(ext.kept)
    assert ext.scores.max() > thresholds[-1]
    assert len(set(ext.scores[ext.scores > 0].tolist())) > len(set(a.scores[a.scores > 0].tolist()))
    asked = acdc(demo_model, small, base._replace(clean_final=base.clean_final[:6], m_clean=base.m_clean[:6]),
                 thresholds=ext.thresholds, seed=0)  # the same as asking for the whole sweep at once
    assert torch.equal(asked.kept, ext.kept) and torch.equal(asked.scores, ext.scores)
    sizes = [int(k.sum()) for k in a.kept]
    assert sizes[0] >= sizes[-1] and sizes[0] < ComponentGraph.of(demo_model).n_edges
    assert set(a.scores.unique().tolist()) <= {0.0, *thresholds}


def test_acdc_default_sweep_goes_on_until_the_top_no_longer_ties(demo_model):
    graph = find_circuit(demo_model, "induction", "acdc", n_prompts=6, seq_len=4, evaluate=False)
    thresholds, sizes = graph.metadata["thresholds"], graph.metadata["circuit_edges"]
    n = len(AUTO_THRESHOLDS)
    assert thresholds[:n] == list(AUTO_THRESHOLDS) and sizes[n - 1] > 1  # auto-circuit's sweep left a tie
    # then on in whole decades (0.1 ... 0.9, 1 ... 9, ...), stopping at the first that leaves at most one edge
    assert thresholds[n : n + 5] == [0.1, 0.3, 0.5, 0.7, 0.9] and (len(thresholds) - n) % 5 == 0
    assert sizes[-1] <= 1 < sizes[-6]
    asked = find_circuit(demo_model, "induction", "acdc", n_prompts=6, seq_len=4, evaluate=False,
                         acdc_thresholds=tuple(AUTO_THRESHOLDS))  # thresholds given: taken as they are
    assert asked.metadata["thresholds"] == list(AUTO_THRESHOLDS)


def test_gradient_methods_refuse_kl(demo_model, setup):
    task, base = setup
    kl = Task("kl", task.clean, task.corrupted, task.answers, task.wrong, metric="kl")
    with pytest.raises(InterpError, match="kl metric"):
        eap(demo_model, kl, base)
    with pytest.raises(InterpError, match="kl metric"):
        attribution_patching(demo_model, kl, base)
    with pytest.raises(InterpError, match="direction must be"):
        activation_patching(demo_model, task, base, direction="sideways")
