"""Benchmark of the analyze and dashboard stages; prints times and ratios (not part of the test run).

1. analyze throughput (tokens/s) against the dictionary's ``encode`` alone over the same rows, with the
   streaming pass and each fixed cost (example windows, co-occurrence, decoder neighbours, logits)
   timed apart;
2. time to build the static site for ``--features`` features (16k by default);
3. time until the index page is ready in headless Chromium with that many features;
4. with ``--memory R1 R2 ..``: instead, the peak RSS of analyze (in a fresh process) on stores of each
   row count, to show that memory does not grow with the store.

The store is synthetic (random activations written in the store format) and the dictionary a plain
ReLU SAE, so the numbers measure interp's own work, not a model's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def synthetic_store(path: Path, n_rows: int, d: int, ctx_len: int, vocab: int) -> None:
    from interp.activations.store import FORMAT, VERSION, shard_name
    from interp.io import atomic_write_json, save_tensors

    g = torch.Generator().manual_seed(0)
    shards, per_shard = [], 64 * ctx_len * 16
    for k, a in enumerate(range(0, n_rows, per_shard)):
        rows = min(per_shard, n_rows - a)
        pos = torch.arange(rows, dtype=torch.int32) % ctx_len - 1
        t = {
            "act/h": torch.randn(rows, d, generator=g),
            "tokens": torch.randint(0, vocab, (rows,), generator=g, dtype=torch.int32),
            "doc": torch.arange(a, a + rows) // ctx_len,
            "pos": pos,
        }
        sha = save_tensors(path / shard_name(k), t)
        shards.append(
            {
                "file": shard_name(k),
                "rows": rows,
                "contexts": rows // ctx_len,
                "bytes": (path / shard_name(k)).stat().st_size,
                "sha256": sha,
            }
        )
    model = {
        "name": "synthetic",
        "architecture": "none",
        "d_model": d,
        "n_layers": 1,
        "n_heads": 1,
        "d_head": d,
        "d_vocab": vocab,
        "n_ctx": ctx_len,
        "bos_token_id": 0,
        "fingerprint": "synthetic",
    }
    atomic_write_json(
        path / "manifest.json",
        {
            "format": FORMAT,
            "version": VERSION,
            "model": model,
            "hooks": {"h": {"shape": [d], "d": d}},
            "ctx_len": ctx_len,
            "dtype": "float32",
            "with_grads": False,
            "shards": shards,
            "complete": True,
        },
    )


class _FakeVocabModel:
    """Token strings and W_U for the synthetic store (the analyze stage's only needs from a model)."""

    def __init__(self, vocab: int, d: int):
        from types import SimpleNamespace

        self.info = SimpleNamespace(fingerprint="synthetic", d_vocab=vocab, name="synthetic")
        self.W_U = torch.randn(d, vocab)

    def token_strings(self, ids):
        return [f"t{int(i)}" for i in ids]


def _encode_seconds(sae, store, chunk_rows: int = 4096) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for chunk in store.chunks("h", chunk_rows):
            sae.encode(chunk.acts["act/h"])
    return time.perf_counter() - t0


def _dictionary(d: int, features: int):
    """A ReLU SAE with seeded random weights on rows of norm about sqrt(d): pre-activations are about
    N(0, 1), and biases from -2 to -4.1 make it sparse (a few dozen active latents per token, common to
    rare features)."""
    from interp.dictionaries import create

    torch.manual_seed(0)
    sae = create("relu", d, features, hook_in="h", model_fingerprint="synthetic")
    with torch.no_grad():
        sae.W_enc_.copy_(torch.randn(d, features) / d**0.5)
        sae.b_dec.zero_()
        sae.b_enc.copy_(-torch.linspace(2.0, 4.1, features))
    return sae


def throughput(args: argparse.Namespace, tmp: Path) -> Path:
    from interp.activations.store import ActivationStore
    from interp.features import AnalyzeConfig, analyze_features
    from interp.io import read_json

    (tmp / "store").mkdir()
    synthetic_store(tmp / "store", args.rows, args.d, 128, 4096)
    store = ActivationStore(tmp / "store")
    sae = _dictionary(args.d, args.features)
    t_encode = _encode_seconds(sae, store)
    t0 = time.perf_counter()
    out = analyze_features(sae, store, tmp / "fs", AnalyzeConfig(), _FakeVocabModel(4096, args.d), progress=False)
    t_analyze = time.perf_counter() - t0
    sec = read_json(out / "manifest.json", "manifest")["timings"]
    n = args.rows
    print(f"rows {n}, d_in {args.d}, features {args.features}, threads {args.threads}")
    print(f"encode alone   : {n / t_encode:10.0f} tok/s ({t_encode:.1f}s)")
    print(
        f"analyze        : {n / t_analyze:10.0f} tok/s ({t_analyze:.1f}s); analyze / encode = "
        f"{t_analyze / t_encode:.2f}x"
    )
    print(
        f"streaming pass : {n / sec['pass']:10.0f} tok/s ({sec['pass']:.1f}s); pass / encode = "
        f"{sec['pass'] / t_encode:.2f}x"
    )
    print(
        "fixed costs    : "
        + ", ".join(
            f"{name} {sec[name]:.1f}s" for name in ("windows", "cooccurrence", "decoder_neighbours", "logits", "write")
        )
    )
    return out


def memory(args: argparse.Namespace, tmp: Path) -> None:
    """Peak RSS of analyze over stores of each size in ``args.memory``, each in a fresh process.

    The children run with a fixed glibc mmap threshold (unless the environment sets one), so that
    freed buffers go back to the system and RSS follows live memory: with glibc's default the heap
    keeps freed pages after large frees, and RSS creeps with the number of chunks.
    """
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ}
    for rows in args.memory:
        path = tmp / f"store-{rows}"
        path.mkdir()
        synthetic_store(path, rows, args.d, 128, 4096)
        t0 = time.perf_counter()
        res = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(path),
                "--d",
                str(args.d),
                "--features",
                str(args.features),
                "--threads",
                str(args.threads),
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        rss = int(res.stdout.split()[-1])
        print(
            f"rows {rows:>9}, d_in {args.d}, features {args.features}: peak RSS {rss / 2**20:7.0f} MiB "
            f"({time.perf_counter() - t0:.0f}s)"
        )
        shutil.rmtree(path)


def child(args: argparse.Namespace) -> None:
    """Analyze the store at ``args.child`` and print this process's peak RSS in bytes (Linux: KiB x 1024)."""
    from interp.features import AnalyzeConfig, analyze_features

    out = Path(args.child).with_name(Path(args.child).name + "-fs")
    analyze_features(
        _dictionary(args.d, args.features),
        args.child,
        out,
        AnalyzeConfig(),
        _FakeVocabModel(4096, args.d),
        progress=False,
    )
    shutil.rmtree(out)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--memory", type=int, nargs="+", metavar="ROWS", help="peak-RSS mode: store sizes in rows")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if args.memory:
            return memory(args, tmp)
        out = throughput(args, tmp)
        dashboard(args, out, tmp)


def dashboard(args: argparse.Namespace, out: Path, tmp: Path) -> None:
    from interp.site.build import build_dashboard

    t0 = time.perf_counter()
    index = build_dashboard(out, tmp / "site", progress=False)
    t_site = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (tmp / "site").rglob("*") if p.is_file()) / 2**20
    print(
        f"site build     : {t_site:.1f}s for {args.features} features "
        f"({args.features / t_site:.0f} features/s, {size:.0f} MiB)"
    )
    if args.no_browser or not Path("/usr/bin/chromium").exists():
        return
    from playwright.sync_api import sync_playwright
    from screenshots import ARGS, CHROMIUM  # bench/screenshots.py: Debian's Chromium and its flags

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = b.new_page()
        t0 = time.perf_counter()
        page.goto(index.as_uri())
        page.wait_for_selector("body[data-ready]", timeout=60000)
        t_index = time.perf_counter() - t0
        before = page.text_content("#count")
        t0 = time.perf_counter()
        page.fill("#search", "t17")  # the index waits 120 ms after the last keystroke, then filters
        page.wait_for_function("b => document.getElementById('count').textContent !== b", arg=before)
        t_search = time.perf_counter() - t0
        t0 = time.perf_counter()
        page.goto(index.parent.joinpath("feature.html").as_uri() + "?i=123")
        page.wait_for_selector("body[data-ready]", timeout=60000)
        t_feature = time.perf_counter() - t0
        b.close()
    print(
        f"index ready    : {t_index:.2f}s in Chromium with {args.features} features "
        f"(search incl. its 120 ms debounce {t_search:.2f}s, feature page {t_feature:.2f}s)"
    )


if __name__ == "__main__":
    main()
