"""The module path of ``Model.capture`` (interp's own GPT-2 / Llama-family modules) against the bridge.

Every hook the module path serves, on every layer, in float32, with and without gradients, must equal the
bridge's ``run_with_cache`` under the configured weight processing; with processing ``none`` the logits must
equal the Hugging Face forward. Checkpoints are tiny random models whose norms and biases are random too, so
folding LayerNorm and value biases is really exercised.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp.errors import InterpError
from interp.model import load_model
from interp.model.bridge import bridge_info
from interp.model.checkpoint import checkpoint_record
from interp.model.transformer import rope_frequencies, spec_from_config
from interp.model.vocabulary import hook_names, served

TORCH_THREADS = 1  # see conftest.py
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "interp-cache"))


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Norm weights around 1 and biases around 0, so folding them changes the weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or "ln_f" in name:
                p.copy_((1 + 0.3 * torch.randn(p.shape, generator=g)) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _save(model: torch.nn.Module, out: Path, tokenizer_dir: Path) -> Path:
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """gpt2 (random LayerNorms and biases, tied), llama (GQA, llama3 rotary scaling, untied),
    qwen2 (q/k/v biases, tied)."""
    from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("module-path")
    gpt2 = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    _randomize(gpt2, 0)
    vocab, bos = gpt2.config.vocab_size, gpt2.config.bos_token_id
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, bos_token_id=bos, eos_token_id=bos)
    torch.manual_seed(1)
    llama = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False, rope_scaling=dict(
        rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16)))
    _randomize(llama, 1)
    torch.manual_seed(2)
    qwen = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    _randomize(qwen, 2)
    return {"gpt2": _save(gpt2, root / "gpt2", tiny_model_dir), "llama": _save(llama, root / "llama", tiny_model_dir),
            "qwen2": _save(qwen, root / "qwen2", tiny_model_dir)}


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(seed))


CASES = [("gpt2", "default"), ("gpt2", "transformer_lens"), ("gpt2", "none"), ("llama", "default"),
         ("qwen2", "default")]


@pytest.mark.parametrize(("family", "processing"), CASES)
def test_every_served_hook_equals_the_bridge(checkpoints, family, processing):
    model = load_model(str(checkpoints[family]), processing=processing)
    hooks = model.resolve_hooks(sorted(served(model.info.n_layers, "gpt2" if family == "gpt2" else "llama")))
    assert model.capture_path(hooks) == "modules"
    tokens = _tokens()
    ours = model.capture(tokens, hooks)
    assert model._bridge is None  # the module path ran without booting the bridge
    theirs = model.capture(tokens, hooks, path="bridge")
    for h in hooks:
        torch.testing.assert_close(ours.acts[h], theirs.acts[h], rtol=1e-5, atol=2e-6, msg=h)
    # the description (fingerprint included) and the hook vocabulary are the bridge's
    assert model.info == bridge_info(model.info.name, model.bridge, processing)
    assert hook_names("gpt2" if family == "gpt2" else "llama", model.info.n_layers) == list(model.bridge.hook_dict)


@pytest.mark.filterwarnings("ignore:A forward hook edited")  # the bridge, about our zero deltas on its norms
@pytest.mark.parametrize(("family", "processing"), [("gpt2", "default"), ("llama", "default"), ("qwen2", "none")])
def test_gradients_equal_the_bridge(checkpoints, family, processing):
    model = load_model(str(checkpoints[family]), processing=processing)
    hooks = model.resolve_hooks(sorted(served(model.info.n_layers, "gpt2" if family == "gpt2" else "llama")))
    tokens = _tokens(1)
    ours = model.capture(tokens, hooks, with_grads=True, path="modules")
    theirs = model.capture(tokens, hooks, with_grads=True, path="bridge")
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-5)
    for h in hooks:
        assert ours.grads[h].shape == ours.acts[h].shape and ours.grads[h].abs().sum() > 0, h
        torch.testing.assert_close(ours.grads[h], theirs.grads[h], rtol=1e-4, atol=1e-6, msg=h)
    # resid_mid's gradient is the residual stream's (the same as the attention output's), not the MLP branch's
    mid, mlp_in = ours.grads["blocks.0.hook_resid_mid"], ours.grads["blocks.0.hook_mlp_in"]
    torch.testing.assert_close(mid, ours.grads["blocks.0.hook_attn_out"])
    assert (mid - mlp_in).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_unprocessed_logits_equal_hugging_face(checkpoints, family):
    from transformers import AutoModelForCausalLM

    model = load_model(str(checkpoints[family]), processing="none")
    tokens = _tokens(2)
    hf = AutoModelForCausalLM.from_pretrained(checkpoints[family]).eval()
    with torch.no_grad():
        ours, want = model._transformer()(tokens), hf(tokens).logits
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)


def test_routing_falls_back_to_the_bridge(checkpoints):
    model = load_model(str(checkpoints["gpt2"]))
    assert model.capture_path(["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]) == "modules"
    pattern = "blocks.0.attn.hook_pattern"
    assert model.capture_path([pattern, "blocks.0.hook_resid_post"]) == "bridge"
    with pytest.raises(InterpError, match="module path cannot capture"):
        model.capture(_tokens(), [pattern], path="modules")
    assert model.capture(_tokens(), [pattern]).acts[pattern].shape == (2, 4, 12, 12)
    with model.hooks([("blocks.0.hook_resid_post", lambda act, hook: act * 0)]):  # a splice applies to capture
        assert model.capture_path(["blocks.1.hook_resid_post"]) == "bridge"
        assert model.capture(_tokens(), ["blocks.0.hook_resid_post"]).acts["blocks.0.hook_resid_post"].abs().max() == 0
    model.finetunable_parameters()  # the bridge's weights may change from now on: it runs every capture
    assert model.capture_path(["blocks.0.hook_resid_post"]) == "bridge"


def test_a_hub_model_in_the_hugging_face_cache_runs_on_the_module_path(checkpoints, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    shutil.copytree(checkpoints["llama"], repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("someone/tiny-llama")
    assert model.info.name == "someone/tiny-llama" and model.capture_path(["blocks.0.hook_resid_post"]) == "modules"
    local = load_model(str(checkpoints["llama"]))
    hook = "blocks.1.hook_resid_mid"
    torch.testing.assert_close(model.capture(_tokens(), [hook]).acts[hook], local.capture(_tokens(), [hook]).acts[hook])
    assert model.info.fingerprint == local.info.fingerprint


def test_configs_old_and_new_and_what_is_refused():
    base = dict(model_type="llama", hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=8,
                vocab_size=10, max_position_embeddings=64)
    old = spec_from_config({**base, "rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 2.0}})
    new = spec_from_config({**base, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}})
    plain = spec_from_config({**base, "rope_theta": 500.0})
    assert old == new and not isinstance(plain, str)
    torch.testing.assert_close(rope_frequencies(old) * 2, rope_frequencies(plain))
    assert "rope_type 'yarn'" in spec_from_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    assert "sliding-window" in spec_from_config({**base, "model_type": "mistral", "sliding_window": 16})
    assert "model_type 'gemma'" in spec_from_config({**base, "model_type": "gemma"})


def test_unsupported_checkpoints_run_on_the_bridge(checkpoints, tmp_path):
    odd = Path(shutil.copytree(checkpoints["gpt2"], tmp_path / "odd"))
    config = json.loads((odd / "config.json").read_text())
    config["scale_attn_by_inverse_layer_idx"] = True
    (odd / "config.json").write_text(json.dumps(config))
    model = load_model(str(odd))
    assert model._bridge is not None and model.capture_path(["blocks.0.hook_resid_post"]) == "bridge"


def test_corpus_encoding_skips_transformers_and_matches_it(checkpoints):
    model = load_model(str(checkpoints["qwen2"]))
    texts = ["def f(x):\n    return x  # café ✓\t", "  leading spaces and ÜNICODE ½", ""]
    ours = model.tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert ours == model.tokenizer.hf(texts, add_special_tokens=False)["input_ids"]
    assert model.tokenizer(texts[0], add_special_tokens=False)["input_ids"] == ours[0]
    assert model.tokenizer.decode(ours[0]) == model.tokenizer.hf.decode(ours[0])  # delegated


def test_module_path_imports_neither_transformer_lens_nor_transformers(checkpoints, tmp_path):
    script = (
        "import sys, torch; from interp.model import load_model\n"
        f"m = load_model({str(checkpoints['llama'])!r})\n"
        "m.capture(torch.ones(1, 5, dtype=torch.long), ['blocks.1.hook_resid_post'])\n"
        "print(int('transformer_lens' in sys.modules), int('transformers' in sys.modules))\n"
    )
    env = {"INTERP_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
            for _ in range(2)]
    # the first run computes the checkpoint's record with transformers (its config and tokenizer); the second
    # reads the record and imports neither
    assert [r.stdout.split() for r in runs] == [["0", "1"], ["0", "0"]]


def test_a_damaged_record_is_computed_again(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path))
    first = checkpoint_record(checkpoints["gpt2"], "default")
    (record,) = (tmp_path / "checkpoints").iterdir()
    record.write_text("{not json")
    assert checkpoint_record(checkpoints["gpt2"], "default") == first
    assert json.loads(record.read_text())["fingerprint"] == first.fingerprint
    assert checkpoint_record(checkpoints["gpt2"], "none").fingerprint != first.fingerprint


def test_bfloat16_runs_close_to_float32(checkpoints):
    hooks = ["blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]
    full = load_model(str(checkpoints["llama"])).capture(_tokens(), hooks)
    half = load_model(str(checkpoints["llama"]), dtype=torch.bfloat16).capture(_tokens(), hooks, path="modules")
    for h in hooks:
        assert half.acts[h].dtype == torch.bfloat16
        torch.testing.assert_close(half.acts[h].float(), full.acts[h], rtol=0.05, atol=0.05)
