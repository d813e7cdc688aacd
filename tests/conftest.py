"""Shared fixtures: a tiny random GPT-2 with its own BPE tokenizer, a tiny random Llama with the same tokenizer, a
small text corpus on disk, a stand-in dictionary with controlled weights, and a feature store made from them.

Thread count: every test runs with ``TORCH_THREADS`` threads, taken from its module (default 1: the tests' tensors
are small, and before this fixture one module's import-time ``set_num_threads(1)`` ran the whole session on one
thread) and restored after, so no module changes it for the others at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

RESID = "blocks.0.hook_resid_post"


@pytest.fixture(autouse=True, scope="module")
def _torch_threads(request: pytest.FixtureRequest):
    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request.module, "TORCH_THREADS", 1))
    yield
    torch.set_num_threads(before)


CORPUS_LINES = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nimport sys\n\ndef main():\n    return os.path.join(sys.argv[0], 'x')\n",
    "while True:\n    value = compute(value)\n    if value > limit:\n        break\n",
]


def make_tiny_model(path: Path, *, vocab_size: int = 320, n_layer: int = 2, d: int = 32, n_ctx: int = 64,
                    extra_tokens: list[str] | None = None, seed: int = 0) -> Path:
    """Save a seeded random GPT-2 (HF format) with a byte-level BPE tokenizer trained on CORPUS_LINES."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS_LINES * 20, trainer)
    if extra_tokens:
        tok.add_tokens(extra_tokens)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    bos = fast.bos_token_id
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(fast), n_positions=n_ctx, n_embd=d, n_layer=n_layer, n_head=4,
                     bos_token_id=bos, eos_token_id=bos)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def make_tiny_llama(path: Path, tokenizer_dir: Path, *, n_layer: int = 2, d: int = 32, n_ctx: int = 64,
                    kv_heads: int = 4, seed: int = 0, **config: Any) -> Path:
    """Save a seeded random Llama (rotary positions, RMSNorm, gated SiLU MLP, no biases, tied embeddings: the
    shape of the ``interp zoo train`` recipe) with the tokenizer of ``tokenizer_dir``. The norms' scales are
    drawn away from one so that folding them into the next weights is exercised. Weights are drawn with std 0.1
    (Hugging Face's 0.02 leaves the residual stream ~50x smaller than a trained model's, rms 0.02 against the
    Llama demo checkpoint's 0.9, which inflates every norm pullback and the float32 rounding of exact sums)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layer,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=n_ctx,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      **{"initializer_range": 0.1, **config})
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from interp.model.model import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir: Path):
    from interp.model.model import load_model

    return load_model(str(tiny_llama_dir))


@pytest.fixture(params=["gpt2", "llama"])
def tiny_lm(request: pytest.FixtureRequest):
    """The tiny GPT-2 and the tiny Llama in turn (both d_model 32, 2 layers of 4 heads, the same tokenizer)."""
    return request.getfixturevalue("tiny_model" if request.param == "gpt2" else "tiny_llama")


@pytest.fixture(scope="session")
def demo_model():
    """The shipped demo model, loaded once per session."""
    from interp.model import load_model

    return load_model("demo")


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-set planted model of ``interp.zoo.planted`` (known previous-token and induction heads)."""
    from interp.zoo.planted import write_planted_model

    return write_planted_model(tmp_path_factory.mktemp("planted") / "model")


@pytest.fixture(scope="session")
def planted_model(planted_dir: Path):
    """The planted model loaded with ``interp.load_model``."""
    import interp

    return interp.load_model(str(planted_dir))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forty small text documents (one per file)."""
    d = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        body = "".join(CORPUS_LINES[(i + j) % len(CORPUS_LINES)] for j in range(3))
        (d / f"doc{i:03d}.txt").write_text(f"# document {i}\n{body}")
    return d


@dataclass
class StandInCfg:
    """The fields of ``interp.dictionaries`` configs that analysis reads."""

    architecture: str
    d_in: int
    d_sae: int
    d_out: int
    hook_in: str
    hook_out: str | None = None
    model_name: str | None = None
    model_fingerprint: str | None = None
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


class StandInSAE(nn.Module):
    """A test double of the dictionary interface: a plain ReLU SAE with seeded random weights."""

    def __init__(self, d_in: int, d_sae: int, hook: str, fingerprint: str | None, seed: int = 0,
                 signed: bool = False):
        super().__init__()
        self.signed = signed
        g = torch.Generator().manual_seed(seed)
        self.cfg = StandInCfg("relu", d_in, d_sae, d_in, hook, model_fingerprint=fingerprint)
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        self.b_enc = nn.Parameter(-torch.linspace(0.5, 2.6, d_sae))  # common to rare features
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in, generator=g) / d_in**0.5)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.signed:  # both signs, as matching pursuit or a linear dictionary give
            pre = x @ self.W_enc + self.b_enc + 1.5
            return pre * (pre.abs() > 1.0)
        x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6) * self.cfg.d_in**0.5  # scale-free firing
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec


@pytest.fixture(scope="session")
def stand_in_sae() -> type[StandInSAE]:
    """The stand-in dictionary class (a ReLU SAE with seeded weights and scale-free firing)."""
    return StandInSAE


@pytest.fixture(scope="session")
def make_feature_store() -> Callable[..., tuple[StandInSAE, Any]]:
    """``make(model_dir, corpus_dir, out, model, n_features, cfg, n_tokens)``: cache ``RESID`` of the model
    over the corpus, analyze a stand-in SAE of ``n_features`` on it; returns (sae, feature store)."""
    from interp.activations import CacheConfig, cache_activations
    from interp.features import analyze_features, load_feature_store
    from interp.model import CorpusConfig

    def make(model_dir: Path, corpus_dir: Path, out: Path, model: Any, n_features: int, cfg: Any,
             n_tokens: int = 512) -> tuple[StandInSAE, Any]:
        store = cache_activations(
            CacheConfig(model=str(model_dir), hooks=(RESID,), n_tokens=n_tokens, ctx_len=32,
                        corpus=CorpusConfig(source=str(corpus_dir))),
            out / "store", progress=False)
        sae = StandInSAE(32, n_features, RESID, store.model["fingerprint"])
        return sae, load_feature_store(analyze_features(sae, store, out / "features", cfg, model, progress=False))

    return make


@pytest.fixture(scope="session")
def tiny_model_factory() -> Callable[..., Path]:
    """:func:`make_tiny_model`, for tests that need a tiny model with options of their own."""
    return make_tiny_model


@pytest.fixture(scope="session")
def corpus_lines() -> list[str]:
    return list(CORPUS_LINES)


@pytest.fixture(scope="session")
def demo_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Feature store directory of a TopK SAE (512 latents, k=8) trained on 32k cached demo-model tokens."""
    from interp.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("autointerp-demo")
    run_demo(out, DemoConfig(n_tokens=32_768, train_tokens=131_072, expansion=4, k=8), progress=False)
    return out / "features"


@pytest.fixture
def own_demo_features(demo_features: Path, tmp_path: Path) -> Path:
    """A private copy of ``demo_features`` without explanation runs, for tests that write runs of their own."""
    import shutil

    return Path(shutil.copytree(demo_features, tmp_path / "features", ignore=shutil.ignore_patterns("explanations")))


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (never ``playwright install``); skips without it. Module-scoped:
    Playwright's sync API keeps an event loop running while it is open, and ``asyncio.run`` (the LLM client)
    cannot run inside it."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh 1280 x 900 page; script errors and dialogs are collected in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("dialog", lambda d: (pg.errors.append("dialog: " + d.message), d.dismiss()))
    yield pg
    context.close()


@pytest.fixture(scope="session")
def open_ready() -> Callable[[Any, str], None]:
    """``open_ready(page, url)``: load a dashboard page and wait until it has drawn itself."""
    def open_page(page: Any, url: str) -> None:
        page.goto(url)
        page.wait_for_selector("body[data-ready]", timeout=20000)

    return open_page


class _Interrupting:
    """A source that raises KeyboardInterrupt after ``after`` batches of the training order (the first call
    of ``batches`` is the init sample and is let through)."""

    def __init__(self, inner: Any, after: int):
        self.inner, self.after, self.calls = inner, after, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def batches(self, *args: Any, **kw: Any):
        self.calls += 1
        for i, b in enumerate(self.inner.batches(*args, **kw)):
            if self.calls > 1 and i >= self.after:
                raise KeyboardInterrupt
            yield b


@pytest.fixture(scope="session")
def interrupting() -> Callable[[Any, int], Any]:
    """``interrupting(source, after)``: ``source`` that stops training with KeyboardInterrupt after ``after``
    batches, as Ctrl-C would."""
    return _Interrupting




@pytest.fixture(scope="session")
def planted(tiny_model_dir, tmp_path_factory):
    """The tiny GPT-2 with planted paths, and transcoders that match them.

    Token X ('def', position 1) gets a large embedding, direction e_X. MLP 0 is one neuron reading e_X (firing
    at position 1 only) and writing w. Layer 1's head 0 attends to X (its key reads e_X, its query is constant),
    reads e_X through its value and writes u; the other heads write nothing. Layer 0's transcoder has that neuron
    as feature 0; layer 1's features 0 and 1 read u and w (e_X, u, w orthonormal and centred)."""

    from transformers import AutoTokenizer, GPT2LMHeadModel

    from interp.circuits.replacement import TranscoderSet
    from interp.dictionaries import create
    from interp.model import load_model

    D, G, PROMPT = 32, 10.0, "def add(a, b):\n    return a + b\n"

    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    X = tok("def")["input_ids"][0]
    with torch.no_grad():
        hf.transformer.wte.weight[X] *= 10  # token X's embedding dominates its residual stream
    basis = torch.cat([torch.ones(1, D), hf.transformer.wte.weight[X].detach()[None], torch.randn(2, D)])
    q, _ = torch.linalg.qr(basis.T)  # orthonormal columns; the first spans the all-ones direction
    e_x, u, w = (q[:, i] * torch.sign(q[:, i] @ basis[i]) for i in (1, 2, 3))
    ids = torch.tensor([[hf.config.bos_token_id] + tok(PROMPT)["input_ids"]])
    seen = {}
    handle = hf.transformer.h[0].ln_2.register_forward_hook(lambda m, i, o: seen.update(x=o[0]))
    hf(ids)
    handle.remove()
    reads = seen["x"].detach() @ e_x  # MLP 0's input along e_X at each position
    others = torch.cat([reads[:1], reads[2:]]).max()
    assert reads[1] > others + 1, "token X stands out along e_X"
    threshold, gain = float(reads[1] + others) / 2, 50.0
    with torch.no_grad():
        mlp = hf.transformer.h[0].mlp
        for p in mlp.parameters():
            p.zero_()
        mlp.c_fc.weight[:, 0], mlp.c_fc.bias[0] = gain * e_x, -gain * threshold  # gelu(gain (x.e_X - threshold))
        mlp.c_proj.weight[0] = w / gain
        attn = hf.transformer.h[1].attn
        attn.c_attn.weight[:, : 3 * D] = 0
        attn.c_attn.bias.zero_()
        attn.c_attn.bias[0], attn.c_attn.weight[:, D] = G, e_x  # head 0's query is constant, its key reads e_X
        attn.c_attn.weight[:, 2 * D] = G * e_x  # value coordinate 0 of head 0
        attn.c_proj.weight.zero_()
        attn.c_proj.bias.zero_()
        attn.c_proj.weight[0] = G * u
    out = tmp_path_factory.mktemp("planted")
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    model = load_model(str(out))
    fp = model.info.fingerprint
    tc0, tc1 = (create("transcoder", D, 4, hook_in=f"blocks.{l}.ln2.hook_normalized", normalization="none",
                       hook_out=f"blocks.{l}.hook_mlp_out", model_fingerprint=fp) for l in (0, 1))
    with torch.no_grad():
        for tc in (tc0, tc1):
            for p in tc.parameters():
                p.zero_()
        tc0.W_enc_[:, 0], tc0.W_dec_[0] = e_x, w
        tc0.b_enc.fill_(-1.0)
        tc0.b_enc[0] = -threshold
        tc1.W_enc_[:, 0], tc1.W_enc_[:, 1] = u, w
    return model, TranscoderSet([tc0, tc1], model), X
