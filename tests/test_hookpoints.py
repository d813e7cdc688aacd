"""Exports that SAELens and sparsify users can use as they are: hook names <-> Hugging Face module paths (checked
against the modules of real GPT-2, Llama and GPT-NeoX checkpoints), sparsify's run layout, and the SAELens
metadata (context size, weight processing, a loadable model reference) recorded by the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interp.activations import CacheConfig, ModelSource, cache_activations
from interp.errors import InterpError
from interp.formats import export_dictionary, import_dictionary
from interp.formats.hookpoints import from_hookpoint, to_hookpoint
from interp.formats.saelens import PRETRAINED_KWARGS
from interp.model import DEMO_DIR, CorpusConfig, load_model
from interp.training import TrainConfig, train_dictionary

TORCH_THREADS = 1
MAPPED = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.hook_mlp_out",
          "blocks.1.hook_attn_out")


def _checkpoint(kind: str, tokenizer_dir: Path, out: Path) -> Path:
    """A seeded random two-layer checkpoint of ``kind`` with the tiny GPT-2's tokenizer."""
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=4, **common))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**common))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt_neox"])
def checkpoint(request, tiny_model_dir, tmp_path_factory) -> Path:
    if request.param == "gpt2":
        return tiny_model_dir
    return _checkpoint(request.param, tiny_model_dir, tmp_path_factory.mktemp(request.param))


def test_mapped_hooks_equal_the_module_outputs(checkpoint):
    """For every hook that maps, the Hugging Face module's output holds interp's activation at that hook."""
    model = load_model(str(checkpoint))
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokens = torch.randint(1, model.info.d_vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = model.info.bos_token_id
    acts = model.capture(tokens, list(MAPPED)).acts
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for hook in MAPPED:
        point = to_hookpoint(hook, None, model.info.architecture)
        module = hf.base_model.get_submodule(point)
        handles.append(module.register_forward_hook(
            lambda _m, _i, o, hook=hook: outputs.__setitem__(hook, o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        hf(tokens)
    for h in handles:
        h.remove()
    for hook in MAPPED:
        torch.testing.assert_close(outputs[hook], acts[hook], rtol=1e-4, atol=1e-4, msg=hook)


def test_hooks_without_a_module_are_refused():
    for hook in ("blocks.0.hook_resid_mid", "blocks.0.ln2.hook_normalized", "blocks.0.attn.hook_z"):
        with pytest.raises(InterpError, match="no Hugging Face module"):
            to_hookpoint(hook, None, "GPT2LMHeadModel")
    with pytest.raises(InterpError, match="not the input and output of one Hugging Face module"):
        to_hookpoint("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", "GPT2LMHeadModel")
    with pytest.raises(InterpError, match="does not know the module paths of OPTForCausalLM.*hookpoint"):
        to_hookpoint("blocks.0.hook_resid_post", None, "OPTForCausalLM")
    assert to_hookpoint("blocks.2.hook_resid_pre", "blocks.2.hook_resid_post", "LlamaForCausalLM") == "layers.2"


@pytest.mark.parametrize(("point", "transcoder", "hooks"), [
    ("h.3", False, ("blocks.3.hook_resid_post", None)),
    ("transformer.h.3", False, ("blocks.3.hook_resid_post", None)),
    ("model.layers.3", False, ("blocks.3.hook_resid_post", None)),
    ("layers.3.mlp", False, ("blocks.3.hook_mlp_out", None)),
    ("gpt_neox.layers.0.attention", False, ("blocks.0.hook_attn_out", None)),
    ("layers.1.self_attn", False, ("blocks.1.hook_attn_out", None)),
    ("drop", False, ("blocks.0.hook_resid_pre", None)),
    ("layers.2", True, ("blocks.2.hook_resid_pre", "blocks.2.hook_resid_post")),
])
def test_hookpoints_read_as_hook_names(point, transcoder, hooks):
    got = from_hookpoint(point, transcoder)
    assert (got.hook_in, got.hook_out) == hooks and got.mapped


@pytest.fixture(scope="module")
def trained(tiny_model_dir, corpus_dir, tmp_path_factory) -> Path:
    """A TopK SAE trained on a store of the tiny GPT-2's blocks.1.hook_resid_post (ctx_len 32, processing none)."""
    root = tmp_path_factory.mktemp("trained")
    store = cache_activations(CacheConfig(model=str(tiny_model_dir), hooks=("blocks.1.hook_resid_post",), n_tokens=1024,
                                          ctx_len=32, processing="none", corpus=CorpusConfig(source=str(corpus_dir))),
                              root / "store", progress=False)
    cfg = TrainConfig(architecture="topk", d_sae=64, k=4, n_tokens=2048, batch_size=128, init_tokens=256, name="sae")
    return train_dictionary(cfg, store, root / "saes", progress=False).dictionaries[0]


def test_sparsify_export_names_the_module_and_imports_the_hook(trained, tmp_path):
    d = import_dictionary(trained, "interp")
    coder = export_dictionary(d, tmp_path / "run", "sparsify")
    assert coder == tmp_path / "run" / "h.1" and (coder / "sae.safetensors").is_file()
    back = import_dictionary(tmp_path / "run", "sparsify")  # the run directory, as SparseCoder.load_many reads it
    assert back.cfg.hook_in == "blocks.1.hook_resid_post"
    cfg = json.loads((coder / "cfg.json").read_text())
    del cfg["interp_hook_in"], cfg["interp_hook_out"], cfg["interp_model_name"]
    (coder / "cfg.json").write_text(json.dumps(cfg))  # as sparsify itself writes it
    assert import_dictionary(coder, "sparsify").cfg.hook_in == "blocks.1.hook_resid_post"
    custom = export_dictionary(d, tmp_path / "custom", "sparsify", hookpoint="decoder.layers.1")
    assert custom.name == "decoder.layers.1"


def test_sparsify_refuses_what_the_raw_model_never_computes(trained, tmp_path):
    d = import_dictionary(trained, "interp")
    d.cfg = type(d.cfg)(**{**d.cfg.__dict__, "training": {**d.cfg.training, "model": {
        **d.cfg.training["model"], "processing": "transformer_lens"}}})
    with pytest.raises(InterpError, match="processing=transformer_lens"):
        export_dictionary(d, tmp_path / "x", "sparsify")


def test_saelens_metadata_carries_context_processing_and_model(trained, tiny_model_dir, tmp_path):
    out = export_dictionary(import_dictionary(trained, "interp"), tmp_path / "sl", "saelens")
    meta = json.loads((out / "cfg.json").read_text())["metadata"]
    assert meta["context_size"] == 32
    assert meta["hook_name"] == "blocks.1.hook_resid_post" and meta["prepend_bos"] is True
    assert meta["model_from_pretrained_kwargs"] == PRETRAINED_KWARGS["none"] == {
        "fold_ln": False, "center_writing_weights": False, "center_unembed": False, "fold_value_biases": False}
    assert meta["model_name"] == str(Path(tiny_model_dir).resolve())
    assert meta["interp_model_name"] == str(tiny_model_dir)
    assert "TransformerBridge.boot_transformers(model_name)" in meta["interp_model_loading"]
    assert PRETRAINED_KWARGS["default"] == {"fold_ln": True, "center_writing_weights": False, "center_unembed": True,
                                            "fold_value_biases": True}
    assert import_dictionary(out, "saelens").cfg.model_name == str(tiny_model_dir)


def test_live_source_records_its_context_length(tiny_model_dir, corpus_dir, tmp_path):
    source = ModelSource(str(tiny_model_dir), ["blocks.0.hook_resid_post"], CorpusConfig(source=str(corpus_dir)),
                         ctx_len=16, batch_contexts=4)
    cfg = TrainConfig(architecture="relu", d_sae=32, n_tokens=256, batch_size=64, init_tokens=64, name="live")
    path = train_dictionary(cfg, source, tmp_path, progress=False).dictionaries[0]
    out = export_dictionary(import_dictionary(path, "interp"), tmp_path / "sl", "saelens")
    meta = json.loads((out / "cfg.json").read_text())["metadata"]
    assert meta["context_size"] == 16 and meta["model_from_pretrained_kwargs"] == PRETRAINED_KWARGS["default"]


def test_demo_model_is_named_by_its_checkpoint_directory():
    from interp.formats.saelens import _local_checkpoint

    assert _local_checkpoint("demo") == Path(DEMO_DIR).resolve() and (Path(DEMO_DIR) / "config.json").is_file()
    assert _local_checkpoint("EleutherAI/pythia-70m") is None
