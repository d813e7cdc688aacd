"""Codebook finetuning and steering on the tiny fixture model (interp.codebooks.finetune / _steering)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interp.codebooks import (
    CodebookBottleneck,
    CodebookFinetuneConfig,
    CodeForce,
    apply_force,
    code_usage,
    codebook_hooks,
    evaluate_lm,
    fire_mask,
    generate_with_codes,
    load_codebooks,
    load_run,
    next_token_shift,
    save_codebooks,
    token_counts,
)
from interp.codebooks.finetune import load_token_data
from interp.errors import InterpError
from interp.model.corpus import CorpusConfig
from interp.model.model import next_token_loss

SITES = ("blocks.0.attn.hook_z", "blocks.1.hook_mlp_out")


def _cfg(model_dir: Path, corpus_dir: Path, **kw) -> CodebookFinetuneConfig:
    base = dict(model=str(model_dir), sites=SITES, n_codes=32, k=2, corpus=CorpusConfig(str(corpus_dir)),
                heldout=None, ctx_len=32, batch_size=8, steps=50, lr=3e-3, model_lr_factor=1.0,
                init_contexts=16, n_eval_contexts=24, replace_dead_every=20)
    base.update(kw)
    return CodebookFinetuneConfig(**base)

TORCH_THREADS = 1  # see conftest.py


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from interp.codebooks.finetune import finetune_codebooks

    cfg = _cfg(tiny_model_dir, corpus_dir)
    return cfg, finetune_codebooks(cfg, tmp_path_factory.mktemp("cbft"), progress=False)


# ---- (a) the layer ---------------------------------------------------------------------------------
def test_snap_with_k_equal_n_is_the_mean_of_all_codes():
    torch.manual_seed(0)
    cb = CodebookBottleneck("s", n_groups=3, n_codes=5, dim=4, k=5)
    x = torch.randn(2, 7, 3, 4)
    snap = cb(x)
    assert snap.codes.shape == (2, 7, 3, 5) and snap.out.shape == x.shape
    assert torch.allclose(snap.out, cb.codes.mean(1).expand(2, 7, 3, 4), atol=1e-6)
    assert sorted(snap.codes[0, 0, 1].tolist()) == list(range(5))


def test_k1_snaps_to_the_code_with_highest_normalised_inner_product():
    torch.manual_seed(1)
    cb = CodebookBottleneck("s", n_groups=2, n_codes=6, dim=4, k=1)
    x = torch.randn(3, 5, 2, 4)
    snap = cb(x)
    xt = cb.normalize(x)
    unit = cb.codes / cb.codes.norm(dim=-1, keepdim=True)
    expected = torch.einsum("btgd,gnd->btgn", xt, unit).argmax(-1)
    assert torch.equal(snap.codes[..., 0], expected)
    chosen = cb.codes[torch.arange(2)[None, None], expected]
    assert torch.allclose(snap.out, chosen, atol=1e-6)


def test_straight_through_gradient_reaches_codes_input_and_model(tiny_model_dir: Path, corpus_dir: Path):
    from interp.codebooks.finetune import init_codebooks
    from interp.model.model import load_model

    model = load_model(str(tiny_model_dir))
    cfg = _cfg(tiny_model_dir, corpus_dir)
    train, _ = load_token_data(cfg, model)
    cbs = init_codebooks(model, cfg, train[:4], torch.Generator().manual_seed(0))
    w = model.bridge.blocks[0].attn.q.original_component.weight  # upstream of the first codebook
    w.requires_grad_(True)
    record: dict = {}
    try:
        with torch.enable_grad(), model.hooks(codebook_hooks(cbs, record=record)):
            next_token_loss(model.forward(train[:1, :6]), train[:1, :6]).mean().backward()
        assert w.grad is not None and w.grad.abs().sum() > 0  # through the straight-through path
    finally:
        w.requires_grad_(False)
        w.grad = None
    for cb in cbs.values():
        assert cb.codes.grad is not None and cb.codes.grad.abs().sum() > 0
        assert cb.ln_weight.grad is not None and cb.ln_weight.grad.abs().sum() > 0
    # the LM gradient reaches exactly the selected codes
    for site, cb in cbs.items():
        selected = torch.zeros(cb.shape[:2], dtype=torch.bool)
        for g in range(cb.shape[0]):
            selected[g, record[site].codes[:, :-1, g].flatten()] = True  # the last position has no loss
        assert torch.equal(cb.codes.grad.abs().sum(-1) > 0, selected), site


def test_forcing_include_and_replace():
    codes = torch.tensor([[[[3, 1]], [[0, 2]], [[4, 5]]]])  # (B=1, T=3, G=1, k=2)
    inc = apply_force(codes, CodeForce(0, 5, [-1, 0]))
    assert inc[0, :, 0].tolist() == [[3, 5], [0, 2], [4, 5]]  # last slot; already present: unchanged
    rep = apply_force(codes, CodeForce(0, 7, None, "replace"))
    assert (rep == 7).all() and codes[0, 0, 0, 0] == 3
    with pytest.raises(InterpError):
        apply_force(codes, CodeForce(2, 0))


def test_config_validation(tiny_model_dir: Path, corpus_dir: Path):
    with pytest.raises(InterpError):
        _cfg(tiny_model_dir, corpus_dir, k=64)
    with pytest.raises(InterpError):
        _cfg(tiny_model_dir, corpus_dir, sites=())


# ---- (b) finetuning ----------------------------------------------------------------------------------
def test_finetuning_lowers_the_codebook_models_loss(run):
    cfg, result = run
    m = result.metrics
    first, last = m["history"][0]["lm_loss"], m["history"][-1]["lm_loss"]
    assert last < first - 1.0, m["history"]
    assert m["finetuned"]["loss"] < m["snap"]["loss"] - 1.0
    assert m["finetuned"]["accuracy"] > m["snap"]["accuracy"]
    # the saved HF model with the saved codebooks reproduces the measured held-out loss
    model, cbs = load_run(result.paths["model"].parent)
    _, held = load_token_data(cfg, model)
    again = evaluate_lm(model, cbs, held)
    # reloading reprocesses the weights (float32 rounding), which can flip a near-tied code choice
    assert again["loss"] == pytest.approx(m["finetuned"]["loss"], abs=1e-2)
    assert (result.paths["model"] / "model.safetensors").is_file()


# ---- (c) save / load ---------------------------------------------------------------------------------
def test_codebook_round_trip_is_exact(run, tmp_path: Path):
    _, result = run
    cbs = load_codebooks(result.paths["codebooks"])
    assert list(cbs) == list(SITES) and cbs[SITES[0]].shape == (4, 32, 8) and cbs[SITES[1]].shape == (1, 32, 32)
    save_codebooks(cbs, tmp_path / "again")
    again = load_codebooks(tmp_path / "again")
    for site in SITES:
        for (name, a), (_, b) in zip(cbs[site].named_parameters(), again[site].named_parameters()):
            assert torch.equal(a, b), name
        assert again[site].k == 2
    assert not list(tmp_path.rglob("*.tmp"))


# ---- (d) steering ------------------------------------------------------------------------------------
def _rise(model, cbs, prompts, site, group, code, targets) -> float:
    rises = []
    for prompt in prompts:
        s = next_token_shift(model, cbs, prompt, site, group, code, mode="replace")
        rises.append((s.forced[0, targets].sum() - s.base[0, targets].sum()).item())
    return sum(rises) / len(rises)


def test_forcing_a_code_shifts_next_tokens_the_way_its_examples_predict(run):
    """Pick the code whose held-out firings are followed by the most concentrated next tokens; force it
    where it did not fire and check that those tokens gain more probability than under random codes."""
    cfg, result = run
    model, cbs = load_run(result.paths["model"].parent)
    _, held = load_token_data(cfg, model)
    usage = code_usage(model, cbs, held)
    vocab = model.info.d_vocab
    candidates = []
    for site, u in usage.items():
        for g in range(u.codes.shape[2]):
            for code in range(cbs[site].shape[1]):
                nxt = token_counts(u, g, code, vocab, offset=1)
                if nxt.sum() >= 20 and fire_mask(u, g, code).float().mean() < 0.5:
                    candidates.append((nxt.max().item() / nxt.sum().item(), site, g, code))
    assert candidates, "no code fires often enough to test"
    _, site, g, code = max(candidates)
    nxt = token_counts(usage[site], g, code, vocab, offset=1).float()
    targets = [t for t in nxt.topk(3).indices.tolist() if nxt[t] / nxt.sum() >= 0.1]
    fired = fire_mask(usage[site], g, code)
    prompts = [held[r: r + 1, : t + 1] for r in range(len(held)) for t in range(4, held.shape[1] - 1, 3)
               if not fired[r, t]][:30]
    target_rise = _rise(model, cbs, prompts, site, g, code, targets)
    gen = torch.Generator().manual_seed(0)
    others = [c for c in torch.randperm(cbs[site].shape[1], generator=gen).tolist() if c != code][:5]
    random_rise = sum(_rise(model, cbs, prompts, site, g, c, targets) for c in others) / len(others)
    assert target_rise > 0.005 and target_rise > random_rise, (site, g, code, target_rise, random_rise)


def test_generate_with_codes_changes_greedy_output(run):
    _, result = run
    model, cbs = load_run(result.paths["model"].parent)
    plain = generate_with_codes(model, cbs, "def add(a, b):", None, max_new_tokens=8)
    assert len(plain.tokens) == 8 and isinstance(plain.text, str)
    forced = [generate_with_codes(model, cbs, "def add(a, b):", SITES[1], 0, c, positions="all",
                                  max_new_tokens=8, mode="replace").tokens for c in range(4)]
    assert any(not torch.equal(f, plain.tokens) for f in forced)
    with pytest.raises(InterpError):
        generate_with_codes(model, cbs, "x", "blocks.0.hook_mlp_out", 0, 0)


def test_a_finetuned_llama_exports_and_reloads(tiny_llama_dir: Path, corpus_dir: Path, tmp_path: Path):
    """Rotary positions, RMSNorm, a gated MLP and tied embeddings: the finetuned model is written back as a Hugging
    Face Llama (``save_hf_model`` checks its log-probs) and reloads with the held-out loss measured in training."""
    from interp.codebooks.finetune import finetune_codebooks

    cfg = _cfg(tiny_llama_dir, corpus_dir, steps=20)
    result = finetune_codebooks(cfg, tmp_path, progress=False)
    m = result.metrics
    assert m["finetuned"]["loss"] < m["snap"]["loss"] - 1.0
    model, cbs = load_run(result.paths["model"].parent)
    assert model.info.architecture == "LlamaForCausalLM"
    _, held = load_token_data(cfg, model)
    assert evaluate_lm(model, cbs, held)["loss"] == pytest.approx(m["finetuned"]["loss"], abs=1e-2)
