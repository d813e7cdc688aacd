"""A disk that fills up during ``interp cache``, ``train`` and ``analyze``, on a real small filesystem; and two
``interp cache`` processes on one store.

The small filesystem is a tmpfs mounted in a private user + mount namespace (``unshare -r -m``), so the test
needs no root and leaves no mount behind; where unshare is not allowed the tests skip (the in-process faults
of ``tests/test_faults.py``, including a file-size limit, still run). Each stage runs through the CLI entry
point in one subprocess inside the namespace, twice: with fast writes and with slow ones (every fsync takes
0.3 s, so the shard writer falls behind the model). A free-space budget smaller than the job's output makes
the disk fill part-way; the test then checks the error, that what is on disk is still valid, and, after the
filler file is deleted, that the same command finishes with the bytes of a run that never failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interp.activations.cache import CacheConfig, cache_activations
from interp.activations.shard import VERIFIED
from interp.features import AnalyzeConfig, analyze_features
from interp.model.corpus import CorpusConfig
from interp.training import TrainConfig, train_dictionary

TORCH_THREADS = 1
ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"
DISK_BYTES = 8 << 20

pytestmark = pytest.mark.slow


@cache
def _unshare_works() -> bool:
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_small_disk = pytest.mark.skipif(not shutil.which("unshare") or not _unshare_works(),
                                      reason="needs unshare -r -m to mount a small tmpfs")

# Runs inside the namespace: for mode in (fast, slow): leave `free` bytes on the disk, run the command (expect
# exit status 2 and the message), check what is on disk, delete the filler, run it again, copy the result out.
SCENARIO = r"""
import contextlib, io, json, os, shutil, sys, time
from pathlib import Path
from cli.main import main
from interp.errors import InterpError

disk, spec = Path(sys.argv[1]), json.loads(sys.argv[2])
filler = disk / "filler"

def fill(free):
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free))

def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()

def on_disk(stage, out):
    if stage == "cache":
        from interp.activations import ActivationStore
        store = ActivationStore(out)
        store.verify_all()
        return {"complete": store.complete, "shards": len(store.shards)}
    if stage == "train":
        from interp.io import load_tensors, read_json
        state = out / "checkpoint" / "state.json"
        if not state.is_file():
            return {"checkpoint_step": None}
        saved = read_json(state)
        for name in saved["files"].values():  # every file state.json names loads
            load_tensors(out / "checkpoint" / name)
        return {"checkpoint_step": saved["step"]}
    from interp.features import load_feature_store
    try:
        load_feature_store(out)
        return {"readable": True}
    except InterpError as e:
        return {"refused": str(e)}

real_fsync, results = os.fsync, {}
for mode in ("fast", "slow"):
    out = disk / mode
    fill(spec["free"])
    if mode == "slow":
        os.fsync = lambda fd: (time.sleep(0.3), real_fsync(fd))[1]
    started = time.time()
    rc, err = run(spec["argv"] + ["--out", str(out)])
    os.fsync = real_fsync
    state = on_disk(spec["stage"], out)
    leftovers = sorted(p.name for p in out.rglob("*.tmp"))
    filler.unlink()
    rc2, err2 = run(spec["argv"] + ["--out", str(out)])
    shutil.copytree(out, Path(spec["copy_to"]) / mode)
    shutil.rmtree(out)
    results[mode] = dict(rc=rc, err=err, seconds=time.time() - started, state=state, leftovers=leftovers,
                         rc2=rc2, err2=err2)
print(json.dumps(results))
"""


def _on_small_disk(tmp_path: Path, spec: dict) -> dict:
    disk = tmp_path / "disk"
    disk.mkdir()
    spec = {**spec, "copy_to": str(tmp_path / "results")}
    cmd = ["unshare", "-r", "-m", "sh", "-c", f'mount -t tmpfs -o size={DISK_BYTES} tmpfs "$1" && shift && exec "$@"',
           "sh", str(disk), sys.executable, "-c", SCENARIO, str(disk), json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=400)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the scenario hung: {(e.stderr or b'')[-2000:]!r}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cache_args(model_dir: Path, corpus: Path) -> list[str]:
    return ["cache", "--model", str(model_dir), "--corpus", str(corpus), "--hooks", HOOK, "--n-tokens", "1024",
            "--ctx-len", "32", "--batch-size", "4", "--shard-mb", "0.02", "--no-progress"]


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != VERIFIED}  # readers write VERIFIED


@pytest.fixture(scope="module")
def made(tiny_model_dir, corpus_dir, tmp_path_factory):
    """A store, a dictionary trained on it and its feature store, each written without faults."""
    root = tmp_path_factory.mktemp("disk-full-reference")
    store = cache_activations(CacheConfig(model=str(tiny_model_dir), hooks=(HOOK,),
                                          corpus=CorpusConfig(source=str(corpus_dir)), n_tokens=1024, ctx_len=32,
                                          batch_size=4, shard_mb=0.02), root / "store", progress=False)
    train_dictionary(TrainConfig(**TRAIN), store, root / "saes", progress=False)
    dictionary = root / "saes" / TRAIN["name"]
    from interp.dictionaries import load_dictionary

    analyze_features(load_dictionary(dictionary), store, root / "features", AnalyzeConfig(), None,
                     dictionary_path=str(dictionary), progress=False)
    return root


TRAIN = dict(architecture="relu", hook=HOOK, d_sae=256, n_tokens=4096, batch_size=64, checkpoint_every=16,
             init_tokens=256, name="sae")


def _train_args(store: Path) -> list[str]:
    flags = ["train", "--store", str(store), "--no-progress"]
    for key, value in TRAIN.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _check(results: dict, message: str, stage: str) -> None:
    for mode, r in results.items():
        assert r["rc"] == 2, f"{mode}: exit status {r['rc']}\n{r['err'][-2000:]}"
        assert "interp: error: Could not write" in r["err"] and "no space is left on the device" in r["err"], r["err"]
        assert message in r["err"], r["err"]
        assert "Traceback" not in r["err"], r["err"]
        assert r["leftovers"] == [], f"{mode}: half-written files left: {r['leftovers']}"
        assert r["rc2"] == 0, f"{mode}: the rerun failed\n{r['err2'][-2000:]}"


@needs_small_disk
def test_cache_on_a_disk_that_fills(tiny_model_dir, corpus_dir, made, tmp_path):
    reference = _files(made / "store")
    shard = len(reference["shard-00000.safetensors"])
    results = _on_small_disk(tmp_path, {"stage": "cache", "argv": _cache_args(tiny_model_dir, corpus_dir),
                                        "free": int(3.5 * shard)})
    _check(results, "run the same interp cache command again: it resumes after the last complete shard", "cache")
    for mode, r in results.items():
        assert r["state"]["complete"] is False and 1 <= r["state"]["shards"] < 8, (mode, r["state"])
        assert _files(tmp_path / "results" / mode) == reference, mode


@needs_small_disk
def test_train_on_a_disk_that_fills(made, tmp_path):
    weights = (made / "saes" / "sae" / "weights.safetensors").stat().st_size
    # one checkpoint (weights and two Adam moments) fits; the next, written before the old one is removed, does not
    results = _on_small_disk(tmp_path, {"stage": "train", "argv": _train_args(made / "store"),
                                        "free": int(4.5 * weights)})
    _check(results, "run the same interp train command again: it resumes from that checkpoint", "train")
    for mode, r in results.items():
        assert r["state"]["checkpoint_step"] == 16, (mode, r["state"])
        # equal tensors (the file's bytes can differ: safetensors writes its metadata keys in a per-process order)
        got = load_file(tmp_path / "results" / mode / "sae" / "weights.safetensors")
        want = load_file(made / "saes" / "sae" / "weights.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), f"{mode}: inexact"


@needs_small_disk
def test_analyze_on_a_disk_that_fills(made, tmp_path):
    reference = _files(made / "features")
    features = len(reference["features.safetensors"])
    argv = ["analyze", "--dictionary", str(made / "saes" / "sae"), "--store", str(made / "store"), "--no-progress"]
    results = _on_small_disk(tmp_path, {"stage": "analyze", "argv": argv, "free": features // 2})
    _check(results, "run the same interp analyze command again", "analyze")
    for mode, r in results.items():
        assert "incomplete" in r["state"].get("refused", ""), (mode, r["state"])
        got = _files(tmp_path / "results" / mode)
        assert got["features.safetensors"] == reference["features.safetensors"], mode
        assert got["vocab.json"] == reference["vocab.json"], mode


def test_two_cache_processes_on_one_store(tiny_model_dir, corpus_dir, made, tmp_path):
    """The second ``interp cache`` on a directory that another is writing is refused; the first finishes. The
    first process's writes wait (in fsync) until the second has been refused, so the two always overlap."""
    out, writing, release = tmp_path / "store", tmp_path / "writing", tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    held = (f"import os, sys, time; from pathlib import Path; f = os.fsync\n"
            f"def fsync(fd):\n    Path({str(writing)!r}).touch()\n"
            f"    while not Path({str(release)!r}).exists(): time.sleep(0.05)\n    return f(fd)\n"
            f"os.fsync = fsync\nfrom cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
    argv = [*_cache_args(tiny_model_dir, corpus_dir), "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-c", held, *argv], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not writing.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert writing.exists(), first.stderr.read() if first.poll() is not None else "first writer never wrote"
        second = subprocess.run([sys.executable, "-m", "cli.main", *argv], env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        release.touch()
        first_err = first.communicate(timeout=300)[1]
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr
    assert "Another process is writing the activation store" in second.stderr
    assert first.returncode == 0, first_err
    assert _files(out) == _files(made / "store")
