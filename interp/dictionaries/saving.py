"""A dictionary on disk: ``cfg.json`` + ``weights.safetensors`` (+ ``metrics.json``), written atomically,
never pickled; and the check that a dictionary belongs to a model and a store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from interp.dictionaries.base import Dictionary, DictionaryConfig
from interp.dictionaries.registry import REGISTRY, lookup
from interp.errors import InterpError
from interp.io import atomic_write_json, load_tensors, read_json, save_tensors
from interp.model import ModelInfo

FORMAT = "interp-dictionary"


VERSION = 1


CFG_FILE = "cfg.json"


WEIGHTS_FILE = "weights.safetensors"


METRICS_FILE = "metrics.json"


def save_dictionary(d: Dictionary, path: str | Path, metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``cfg.json`` and ``weights.safetensors`` (and ``metrics.json`` when ``metrics`` are given) into
    directory ``path``, each atomically, weights first."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in d.state_dict().items()}
    save_tensors(
        path / WEIGHTS_FILE, tensors, metadata={"format": FORMAT, "architecture": d.cfg.architecture}
    )
    if metrics is not None:
        atomic_write_json(path / METRICS_FILE, dict(metrics))
    atomic_write_json(path / CFG_FILE, {"format": FORMAT, "version": VERSION, **asdict(d.cfg)})
    return path


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The training metrics saved with the dictionary in directory ``path`` (``metrics.json``; dictionaries
    written before that file existed kept them in ``cfg.json``); ``{}`` when there are none."""
    path = Path(path)
    if (path / METRICS_FILE).is_file():
        return dict(read_json(path / METRICS_FILE, "dictionary metrics"))
    return dict(read_json(path / CFG_FILE, "dictionary config").get("metrics") or {})


def load_dictionary(path: str | Path, device: str = "cpu") -> Dictionary:
    """Rebuild a dictionary saved by :func:`save_dictionary` (the class comes from ``cfg.json``)."""
    path = Path(path)
    raw = read_json(path / CFG_FILE, "dictionary config")
    if raw.get("format") != FORMAT:
        raise InterpError(
            f"{path / CFG_FILE} is not an interp dictionary config (format {raw.get('format')!r})."
        )
    if raw.get("version", 0) > VERSION:
        raise InterpError(f"Dictionary {path} has format version {raw['version']}; upgrade interp.")
    known = {f.name for f in fields(DictionaryConfig)}
    cfg = DictionaryConfig(**{k: v for k, v in raw.items() if k in known})
    lookup(cfg.architecture)
    d = REGISTRY[cfg.architecture](cfg)
    state = load_tensors(path / WEIGHTS_FILE, device=device)
    missing, unexpected = d.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InterpError(
            f"Weights in {path} do not match a {cfg.architecture} dictionary "
            f"(missing {missing}, unexpected {unexpected})."
        )
    return d.to(device)


def check_compatible(
    d: Dictionary, model: ModelInfo | Mapping[str, Any], widths: Mapping[str, int] | None = None
) -> None:
    """Raise InterpError unless ``d`` was made for ``model`` (a ModelInfo or its dict) and, when ``widths``
    (hook -> row width of what a source holds) is given, unless the source holds the dictionary's hooks
    with the dictionary's widths. Fingerprints are compared when both sides know one."""
    info = model.to_dict() if isinstance(model, ModelInfo) else dict(model)
    fp, name = info.get("fingerprint"), info.get("name")
    if d.cfg.model_fingerprint and fp and fp != d.cfg.model_fingerprint:
        raise InterpError(
            f"This dictionary was trained on model {d.cfg.model_name!r} "
            f"(fingerprint {d.cfg.model_fingerprint}) "
            f"but is being used with {name!r} (fingerprint {fp}). Use a dictionary trained on this model."
        )
    if widths is None:
        return
    ins = d.cfg.hooks_in or ((d.cfg.hook_in,) if d.cfg.hook_in else ())
    outs = d.cfg.hooks_out or ((d.cfg.hook_out,) if d.cfg.hook_out else ())
    pairs = [(h, d.cfg.d_in // len(ins)) for h in ins] + [(h, d.cfg.d_out // len(outs)) for h in outs]
    for h, width in pairs:
        if h not in widths:
            raise InterpError(f"The dictionary reads {h!r}, which the store does not hold ({', '.join(widths)}).")
        if widths[h] != width:
            raise InterpError(f"Hook {h!r} has width {widths[h]} in the store but the dictionary expects {width}.")
