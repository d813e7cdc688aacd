"""Training across processes: real ``torchrun`` jobs of 2 processes on the gloo backend, on CPU, against the same
training in one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from interp.activations import ActivationStore, CacheConfig, cache_activations
from interp.dictionaries import load_dictionary
from interp.model import CorpusConfig
from interp.training import TrainConfig, train_dictionary

TORCH_THREADS = 1  # torchrun's workers run one thread each (see conftest.py)
ROOT = Path(__file__).resolve().parents[1]
HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], *, nproc: int = 2, wait: bool = True, script: Path | None = None):
    """``torchrun --nproc-per-node nproc`` of ``interp ARGS`` (or of a script), from a clean environment."""
    target = [str(script)] if script else ["-m", "cli.main"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={_port()}", *target, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return done


@pytest.fixture(scope="module")
def store(tiny_model, tiny_model_dir, corpus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale") / "store"
    cfg = CacheConfig(model=str(tiny_model_dir), hooks=HOOKS, corpus=CorpusConfig(str(corpus_dir)), n_tokens=4096,
                      ctx_len=32)
    return cache_activations(cfg, out, model=tiny_model, progress=False).path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_dictionary(path).state_dict())


DDP = dict(architecture="relu", hook=HOOKS[0], d_sae=64, n_tokens=256 * 24, batch_size=256, lr=3e-3,
           checkpoint_every=8, log_every=4, seed=3, init_tokens=1024)
DDP_FLAGS = ["--architecture", "relu", "--hook", HOOKS[0], "--d-sae", "64", "--n-tokens", str(256 * 24),
             "--batch-size", "256", "--lr", "3e-3", "--checkpoint-every", "8", "--log-every", "4", "--seed", "3",
             "--init-tokens", "1024"]


@pytest.fixture(scope="module")
def ddp_run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun(["train", "--store", str(store), "--out", str(out), "--no-progress", *DDP_FLAGS])
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_ddp_gives_the_weights_of_one_process(store, ddp_run, tmp_path):
    single = train_dictionary(TrainConfig(**DDP), store, tmp_path, progress=False).dictionaries[0]
    name = single.name
    ddp, one = _weights(ddp_run / name), _weights(single)
    assert ddp.keys() == one.keys()
    for key in one:  # the same global batches; only the order of float sums differs (2 x 128 rows vs 256)
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert json.loads((ddp_run / name / "cfg.json").read_text())["training"]["world_size"] == 2
    assert not (ddp_run / "checkpoint").exists()


def test_dictionaries_spread_over_ranks_equal_their_single_process_training(store, tmp_path):
    sweep = [
        {"name": "wide", "architecture": "topk", "hook": HOOKS[0], "d_sae": 96, "k": 4},
        {"name": "narrow", "architecture": "relu", "hook": HOOKS[1], "d_sae": 32},
        {"name": "mid", "architecture": "batchtopk", "hook": HOOKS[1], "d_sae": 64, "k": 4},
    ]
    common = {"n_tokens": 128 * 20, "batch_size": 128, "lr": 3e-3, "checkpoint_every": 10}
    (tmp_path / "sweep.json").write_text(json.dumps([{**c, **common} for c in sweep]))
    done = torchrun(["train", "--store", str(store), "--out", str(tmp_path / "ranks"), "--config",
                     str(tmp_path / "sweep.json"), "--no-progress"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "ranks" / "train_log.rank1.jsonl").exists()  # rank 1 trained dictionaries of its own
    for c in sweep:  # each alone in one process: a dictionary trains the same whatever shares its pass
        alone = train_dictionary(TrainConfig(**{**c, **common}), store, tmp_path / c["name"], progress=False)
        spread, one = _weights(tmp_path / "ranks" / c["name"]), _weights(alone.dictionaries[0])
        for key in one:
            torch.testing.assert_close(spread[key], one[key], rtol=0, atol=1e-6, msg=f"{c['name']} {key}")


def test_on_the_fly_ddp_runs_the_model_on_each_ranks_share(tiny_model_dir, corpus_dir, tmp_path):
    done = torchrun(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus_dir), "--ctx-len", "32",
                     "--model-batch", "4", "--hook", HOOKS[1], "--architecture", "topk", "-k", "4", "--d-sae", "64",
                     "--n-tokens", "2048", "--batch-size", "128", "--init-tokens", "256", "--out",
                     str(tmp_path / "live"), "--no-progress"])
    assert done.returncode == 0, done.stdout + done.stderr
    cfg = json.loads((tmp_path / "live" / f"topk-{HOOKS[1]}" / "cfg.json").read_text())
    assert cfg["training"]["source"] == "ModelSource" and cfg["training"]["world_size"] == 2
    metrics = json.loads((tmp_path / "live" / f"topk-{HOOKS[1]}" / "metrics.json").read_text())
    assert metrics["fvu"] < 1.0  # it learned (the replicas were checked identical at the end of the run)


BAD_INPUTS = '''
import json, os, sys
from interp.errors import InterpError
from interp.training import TrainConfig, train_dictionary
from interp.distributed import init_from_env
init_from_env()
rank, store, out = int(os.environ["RANK"]), sys.argv[1], sys.argv[2]
seen = {}
base = dict(architecture="relu", hook="blocks.0.hook_resid_post", d_sae=32, n_tokens=512, batch_size=128)
for case, cfg in {
    "differs": [TrainConfig(**{**base, "lr": 1e-3 * (rank + 1)})],
    "uneven": [TrainConfig(**{**base, "batch_size": 127})],
}.items():
    try:
        train_dictionary(cfg, store, f"{out}/{case}", progress=False)
        seen[case] = "trained"
    except InterpError as e:
        seen[case] = str(e)
json.dump(seen, open(f"{out}/rank{rank}.json", "w"))
'''


def test_bad_distributed_inputs_get_clear_errors_on_every_rank(store, tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(BAD_INPUTS)
    done = torchrun([str(store), str(tmp_path)], script=script)
    assert done.returncode == 0, done.stdout + done.stderr
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert "differs between rank" in seen["differs"] and "lr" in seen["differs"], seen
        assert "multiple of 2" in seen["uneven"], seen
    two = [{"name": n, "architecture": "relu", "hook": HOOKS[0], "n_tokens": 512, "batch_size": 128} for n in "ab"]
    (tmp_path / "two.json").write_text(json.dumps(two))
    too_many = torchrun(["train", "--store", str(store), "--out", str(tmp_path / "few"), "--config",
                         str(tmp_path / "two.json")], nproc=3)
    assert too_many.returncode != 0 and "3 processes for 2 dictionaries" in too_many.stdout + too_many.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_sigkill_of_one_rank_then_rerun_resumes_without_loss_or_duplication(store, ddp_run, tmp_path):
    out = tmp_path / "killed"
    args = ["train", "--store", str(store), "--out", str(out), "--no-progress", *DDP_FLAGS]
    proc = torchrun(args, wait=False)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["step"] >= 8:
            break
        time.sleep(0.02)
    workers = _children(proc.pid)
    assert proc.poll() is None and workers, "the run finished before it could be killed"
    os.kill(workers[-1], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (out / f"relu-{HOOKS[0]}").exists()
    done = torchrun(args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from step" in done.stdout + done.stderr
    name = f"relu-{HOOKS[0]}"
    resumed, uninterrupted = _weights(out / name), _weights(ddp_run / name)
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=key)
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(4, 25, 4))  # every logged step once: nothing lost, nothing repeated


def test_a_checkpoint_of_one_process_resumes_on_two(store, ddp_run, tmp_path, interrupting):
    """Checkpoints are one file per dictionary and the data order is the global one, so a run resumes on
    another number of processes: here one process stops after its checkpoint at step 8 and two finish."""
    with pytest.raises(KeyboardInterrupt):
        train_dictionary(TrainConfig(**DDP), interrupting(ActivationStore(store), after=10), tmp_path, progress=False)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 8
    done = torchrun(["train", "--store", str(store), "--out", str(tmp_path), "--no-progress", *DDP_FLAGS])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from step 8" in done.stdout + done.stderr
    name = f"relu-{HOOKS[0]}"
    resumed, uninterrupted = _weights(tmp_path / name), _weights(ddp_run / name)
    for key in resumed:  # the same batches; float sums in another order for the first 8 steps
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-4, atol=1e-5, msg=key)


def _cache_args(model_dir: Path, corpus_dir: Path, out: Path) -> list[str]:
    return ["cache", "--model", str(model_dir), "--corpus", str(corpus_dir), "--hooks", *HOOKS, "--n-tokens", "4096",
            "--ctx-len", "32", "--batch-size", "2", "--shard-mb", "0.05", "--no-progress", "--out", str(out)]


@pytest.fixture(scope="module")
def one_process_store(tiny_model, tiny_model_dir, corpus_dir, tmp_path_factory) -> Path:
    cfg = CacheConfig(model=str(tiny_model_dir), hooks=HOOKS, corpus=CorpusConfig(str(corpus_dir)), n_tokens=4096,
                      ctx_len=32, batch_size=2, shard_mb=0.05)
    return cache_activations(cfg, tmp_path_factory.mktemp("one") / "store", model=tiny_model, progress=False).path


def _store_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("shard-*.safetensors"))}


def test_distributed_cache_writes_the_single_process_store(tiny_model_dir, corpus_dir, one_process_store, tmp_path):
    done = torchrun(_cache_args(tiny_model_dir, corpus_dir, tmp_path / "store"))
    assert done.returncode == 0, done.stdout + done.stderr
    want, got = json.loads((one_process_store / "manifest.json").read_text()), json.loads(
        (tmp_path / "store" / "manifest.json").read_text())
    assert got["complete"] and got["shards"] == want["shards"] and len(got["shards"]) >= 4
    assert _store_files(tmp_path / "store") == _store_files(one_process_store)  # disjoint, complete, identical
    assert not list((tmp_path / "store").glob("manifest.rank*.json"))
    # each rank recorded the shards it wrote (hashed as written); rank 0 merged the records: no reader hashes them
    assert not list((tmp_path / "store").glob("verified.rank*.json"))
    store = ActivationStore(tmp_path / "store")
    assert sorted(store._verified) == sorted(s["file"] for s in got["shards"])


def test_distributed_cache_resumes_after_one_rank_is_killed(tiny_model_dir, corpus_dir, one_process_store, tmp_path):
    out = tmp_path / "store"
    proc = torchrun(_cache_args(tiny_model_dir, corpus_dir, out), wait=False)
    part = out / "manifest.rank0.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and len(json.loads(part.read_text())["shards"]) >= 2:
            break
        time.sleep(0.01)
    workers = _children(proc.pid)
    assert proc.poll() is None and workers, "the run finished before it could be killed"
    os.kill(workers[-1], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    again = torchrun(_cache_args(tiny_model_dir, corpus_dir, out))  # rerun: resumes every rank's finished shards
    assert again.returncode == 0, again.stdout + again.stderr
    assert _store_files(out) == _store_files(one_process_store)
    assert json.loads((out / "manifest.json").read_text())["shards"] == json.loads(
        (one_process_store / "manifest.json").read_text())["shards"]
    assert not list(out.glob("verified.rank*.json"))  # merged into verified.json by rank 0
