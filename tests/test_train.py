"""The training loop: every registered architecture recovers toy ground truth; resume is exact; bad
input fails before work is lost."""

from __future__ import annotations

import json

import pytest
import torch

from interp.activations.synthetic import hierarchical_tree, toy_superposition
from interp.activations.tensors import TensorSource
from interp.dictionaries import REGISTRY, load_dictionary, read_metrics
from interp.errors import InterpError
from interp.training import TrainConfig, train_dictionary
from interp.training.evals import mmcs
from interp.training.loop import lr_at

TORCH_THREADS = 1  # see conftest.py

# Honest per-architecture MMCS floors on the toy problem below (64 features in 32 dims, 128 latents,
# 512 steps). Measured values are in docs/dictionaries.md; floors sit a little under them. The skip
# transcoder is lower by design: its linear skip path explains part of the map, so fewer atoms align.
MMCS_FLOOR = {
    "topk": 0.95,
    "gsae": 0.9,
    "batchtopk": 0.9,
    "relu": 0.95,
    "relu_normweighted": 0.95,
    "relu_unitnorm": 0.9,
    "jumprelu": 0.9,
    "gated": 0.95,
    "matryoshka": 0.9,
    "mp": 0.95,
    "codebook": 0.9,
    "transcoder": 0.85,
    "skip_transcoder": 0.65,
    "clt": 0.9,
}
PARAMS = {
    "topk": {"k": 4},
    "gsae": {"k": 4},
    "batchtopk": {"k": 4},
    "matryoshka": {"k": 4, "params": {"group_sizes": [64, 64]}},  # a prefix at the true feature count
    "mp": {"k": 4},
    "codebook": {"k": 2},
    "skip_transcoder": {"k": 4},
    "transcoder": {"params": {"l1_coeff": 1.0}},
    "clt": {"params": {"sparsity_coeff": 0.3}},
}


@pytest.fixture(scope="module")
def toy():
    return toy_superposition(16384, d=32, n_features=64, p_active=0.04, seed=0)


def _source(arch: str, toy) -> tuple[TensorSource, torch.Tensor, dict]:
    """Autoencoders read x; transcoders map x to y = the same codes in other directions; g-SAE gets grads.
    The cross-layer transcoder reads two layers x.0, x.1 and predicts y.0 = c0 A, y.1 = c0 B + c1 C: layer-0
    features must learn decoders to both layers ([A, B]), layer-1 features [0, C]."""
    if arch == "clt":
        other = toy_superposition(len(toy.x), d=32, n_features=64, p_active=0.04, seed=3)
        A, B, C = (toy_superposition(1, d=32, n_features=64, seed=s).directions for s in (1, 4, 5))
        acts = {"x.0": toy.x, "x.1": other.x, "y.0": toy.coeffs @ A, "y.1": toy.coeffs @ B + other.coeffs @ C}
        truth = torch.cat([torch.cat([A, B], 1), torch.cat([torch.zeros_like(C), C], 1)])
        return TensorSource(acts), truth, {"hook": "x.*", "hook_out": "y.*"}
    if arch in ("transcoder", "skip_transcoder"):
        out_dirs = toy_superposition(1, d=32, n_features=64, seed=1).directions
        return TensorSource({"x": toy.x, "y": toy.coeffs @ out_dirs}), out_dirs, {"hook": "x", "hook_out": "y"}
    grads = (
        {"x": torch.randn(toy.x.shape, generator=torch.Generator().manual_seed(2))}
        if arch == "gsae"
        else None
    )
    return TensorSource({"x": toy.x}, grads=grads), toy.directions, {}


def _cfg(arch: str, **kw) -> TrainConfig:
    base = dict(architecture=arch, d_sae=128, n_tokens=16384 * 8, batch_size=256, lr=3e-3, log_every=64)
    return TrainConfig(**{**base, **PARAMS.get(arch, {}), **kw})


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_architecture_recovers_toy_ground_truth(arch, toy, tmp_path):
    source, truth, hooks = _source(arch, toy)
    result = train_dictionary(_cfg(arch, **hooks), source, tmp_path, progress=False)
    d = load_dictionary(result.dictionaries[0])
    score = mmcs(d.W_dec.detach(), truth)
    assert score >= MMCS_FLOOR[arch], f"{arch}: MMCS {score:.3f}"
    assert d.cfg.training["architecture"] == arch and read_metrics(result.dictionaries[0])["fvu"] < 0.5
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(64, 513, 64))


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_resume_after_a_stop_is_bit_identical(arch, toy, tmp_path):
    """A NaN row stops training (nan_policy='stop'); resuming on clean data must match a clean run."""
    kw = dict(
        n_tokens=256 * 30, d_sae=64, checkpoint_every=5, resample_every=7, dead_tokens=512, init_tokens=1024
    )
    if arch == "matryoshka":
        kw["params"] = {"group_sizes": [32, 32]}
    source, _, hooks = _source(arch, toy)
    rows = slice(0, 4096)
    clean = TensorSource({h: v[rows] for h, v in source.acts.items()}, {h: v[rows] for h, v in source.grads.items()})
    full = load_dictionary(
        train_dictionary(_cfg(arch, **hooks, **kw), clean, tmp_path / "a", progress=False).dictionaries[0]
    )
    first_epoch = torch.randperm(4096, generator=torch.Generator().manual_seed(0))  # TensorSource's order, seed 0
    poisoned = {h: v.clone() for h, v in clean.acts.items()}
    poisoned[hooks.get("hook", "x").replace("*", "0")][first_epoch[12 * 256 + 7], 0] = float("nan")  # batch 12
    with pytest.raises(InterpError, match="non-finite"):
        train_dictionary(_cfg(arch, **hooks, **kw), TensorSource(poisoned, clean.grads), tmp_path / "b",
                         progress=False)
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10
    resumed = load_dictionary(
        train_dictionary(_cfg(arch, **hooks, **kw), clean, tmp_path / "b", progress=False).dictionaries[0]
    )
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_nan_batches_are_skipped_when_asked(toy, tmp_path):
    x = toy.x[:2048].clone()
    x[5, 3] = float("inf")
    result = train_dictionary(
        _cfg("topk", n_tokens=2048, nan_policy="skip"), TensorSource({"x": x}), tmp_path, progress=False
    )
    assert torch.isfinite(load_dictionary(result.dictionaries[0]).W_dec).all()


def test_bad_input_fails_before_any_file_is_written(toy, tmp_path):
    source = TensorSource({"x": toy.x[:1024]})
    with pytest.raises(InterpError, match="width 32 .* d_in=16"):
        train_dictionary(_cfg("topk", d_in=16), source, tmp_path / "o", progress=False)
    with pytest.raises(InterpError, match="no hook 'y'"):
        train_dictionary(_cfg("topk", hook="y"), source, tmp_path / "o", progress=False)
    with pytest.raises(InterpError, match="--with-grads"):
        train_dictionary(_cfg("gsae"), source, tmp_path / "o", progress=False)
    with pytest.raises(InterpError, match="Unknown architecture"):
        TrainConfig(architecture="sparse")
    with pytest.raises(InterpError, match="nan_policy"):
        TrainConfig(nan_policy="ignore")
    assert not (tmp_path / "o").exists()


def test_one_pass_trains_a_sweep_over_hooks_and_hyperparameters(toy, tmp_path):
    source = TensorSource({"a": toy.x[:2048], "b": -toy.x[:2048]})
    cfgs = [
        _cfg("topk", hook="a", k=2, name="a2", n_tokens=2048),
        _cfg("topk", hook="a", k=8, name="a8", n_tokens=2048),
        _cfg("relu", hook="b", name="b", n_tokens=2048),
    ]
    result = train_dictionary(cfgs, source, tmp_path, progress=False)
    assert [p.name for p in result.dictionaries] == ["a2", "a8", "b"]
    assert result.metrics["a2"]["l0"] <= 2 < result.metrics["a8"]["l0"] <= 8
    assert load_dictionary(tmp_path / "b").cfg.hook_in == "b"
    # Dictionaries of a sweep share the training buffers; each must still equal its run alone.
    alone = load_dictionary(train_dictionary(cfgs[1], source, tmp_path / "alone", progress=False).dictionaries[0])
    for name, value in load_dictionary(tmp_path / "a8").state_dict().items():
        assert torch.equal(value, alone.state_dict()[name]), name
    from interp.dictionaries import linear

    assert not getattr(linear._WORKSPACES, "buffers", None), "buffers are released when training ends"
    with pytest.raises(InterpError, match="share n_tokens"):
        train_dictionary(
            [cfgs[0], _cfg("topk", hook="b", n_tokens=4096)], source, tmp_path / "x", progress=False
        )


def test_lr_schedule_warms_up_and_decays_to_zero():
    cfg = TrainConfig(
        n_tokens=100 * 10, batch_size=10, warmup_steps=10, schedule="linear", decay_fraction=0.2
    )
    lrs = [lr_at(cfg, 1.0, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[50] == 1.0
    assert lrs[80] == pytest.approx(1.0) and lrs[99] == pytest.approx(0.05)
    cos = TrainConfig(n_tokens=1000, batch_size=10, schedule="cosine")
    assert lr_at(cos, 1.0, 0) == 1.0 and lr_at(cos, 1.0, 50) == pytest.approx(0.5)


def test_hierarchical_tree_matches_the_spec():
    data = hierarchical_tree(20000, level=1, seed=0)
    on = data.coeffs > 0
    assert data.x.shape == (20000, 20) and torch.allclose(data.directions.norm(dim=1), torch.ones(20))
    assert on[:, [0, 4, 8, *range(12, 20)]].sum(1).max() == 1  # root children exclusive
    assert on[:, 1:4].any(1).le(on[:, 0]).all()  # a child only under its parent
    assert (
        abs(on[:, 0].float().mean().item() - 0.2) < 0.02
        and abs(on[:, 12].float().mean().item() - 0.05) < 0.01
    )
    assert abs(on[:, 1].float().mean().item() - 0.2 * 0.2) < 0.01
    gram = data.directions @ data.directions.T
    assert gram[1, 2] > 0.05 and abs(gram[1, 5]) < 1e-5


def test_wandb_gets_the_same_rows_as_the_jsonl_log(toy, tmp_path, monkeypatch):
    """A real wandb run in offline mode; its history records are read back from the run file."""
    pytest.importorskip("wandb")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    cfg = _cfg("topk", k=4, d_sae=64, n_tokens=256 * 16, log_every=4, wandb_project="interp-test")
    train_dictionary(cfg, TensorSource({"x": toy.x[:4096]}), tmp_path / "out", progress=False)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = _wandb_history(run_file)
    jsonl = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [row["_step"] for row in history] == [row["step"] for row in jsonl] == [4, 8, 12, 16]
    for logged, row in zip(history, jsonl):
        assert logged["topk-x/loss"] == pytest.approx(row["loss"]) and logged["topk-x/l0"] == row["l0"]


def _wandb_history(path) -> list[dict]:
    """History rows of a ``.wandb`` run file: a ":W&B" header, then a LevelDB-format log (32 KiB blocks of
    records with a 7-byte header: crc32, length, type) of protobuf ``Record`` messages."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, pending, rows = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of a record split across blocks
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows
