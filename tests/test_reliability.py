"""Promises of docs/reliability.md that no stage test covers: nothing is ever unpickled, and every reader refuses
a format it does not know and a version newer than its own."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from interp.activations import ActivationStore
from interp.dictionaries import create, load_dictionary, save_dictionary
from interp.errors import InterpError
from interp.features import load_feature_store
from interp.io import atomic_write_json, save_tensors

ROOT = Path(__file__).resolve().parents[1]
UNPICKLERS = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node, node.func.attr, ast.unparse(node.func.value)


def test_the_library_never_unpickles():
    """No module of interp or cli imports an unpickler, calls torch.load without weights_only=True, or lets
    numpy load pickles."""
    found = []
    for path in sorted([*(ROOT / "interp").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: import {n}" for n in names if n.split(".")[0] in UNPICKLERS]
        for call, attr, owner in _calls(tree):
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if attr == "load" and owner == "torch" and keywords.get("weights_only") != "True":
                found.append(f"{path.name}:{call.lineno}: torch.load without weights_only=True")
            if attr == "load" and owner in ("np", "numpy") and keywords.get("allow_pickle") not in (None, "False"):
                found.append(f"{path.name}:{call.lineno}: numpy load of pickles")
    assert found == []


def _store(path: Path, version: int) -> Path:
    save_tensors(path / "shard-00000.safetensors", {"tokens": torch.zeros(2, dtype=torch.int32)})
    atomic_write_json(path / "manifest.json", {"format": "interp-activation-store", "version": version,
                                               "model": {}, "hooks": {}, "ctx_len": 2, "dtype": "float32",
                                               "shards": [], "complete": True})
    return path


def test_readers_refuse_unknown_formats_and_newer_versions(tmp_path):
    ActivationStore(_store(tmp_path / "s1", 1))
    with pytest.raises(InterpError, match="version 7; upgrade interp"):
        ActivationStore(_store(tmp_path / "s7", 7))
    d = save_dictionary(create("topk", 8, 16, k=2), tmp_path / "d")
    cfg = json.loads((d / "cfg.json").read_text())
    (d / "cfg.json").write_text(json.dumps({**cfg, "version": 7}))
    with pytest.raises(InterpError, match="version 7; upgrade interp"):
        load_dictionary(d)
    (d / "cfg.json").write_text(json.dumps({**cfg, "format": "something-else"}))
    with pytest.raises(InterpError, match="not an interp dictionary"):
        load_dictionary(d)
    fs = tmp_path / "fs"
    atomic_write_json(fs / "manifest.json", {"format": "interp-feature-store", "version": 7, "complete": True})
    with pytest.raises(InterpError, match="version 7; upgrade interp"):
        load_feature_store(fs)
    atomic_write_json(fs / "manifest.json", {"format": "interp-activation-store", "version": 1})
    with pytest.raises(InterpError, match="not a feature store"):
        load_feature_store(fs)
    from interp.autointerp.explanations import read_record, record_path

    run = tmp_path / "run"
    atomic_write_json(record_path(run, 3), {"format": "interp-autointerp-feature", "version": 7, "feature": 3})
    with pytest.raises(InterpError, match="format version 7"):
        read_record(run, 3)
    atomic_write_json(record_path(run, 3), {"format": "other", "version": 1})
    with pytest.raises(InterpError, match="not an interp explanation record"):
        read_record(run, 3)
