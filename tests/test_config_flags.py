"""Every config field is a flag, and a config file gives the same config as the equivalent flags."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from cli.config_flags import config_fields, config_kwargs
from cli.main import build_parser
from interp.activations import CacheConfig
from interp.configs import config_from_dict
from interp.errors import InterpError
from interp.model import CorpusConfig
from interp.training import TrainConfig, load_train_configs


def _args(argv: list[str]):
    return build_parser(only=argv[0]).parse_args(argv)


@pytest.mark.parametrize(
    ("module", "cls", "free_form"),
    [("interp.activations.cache", CacheConfig, set()), ("interp.training.config", TrainConfig, {"params"})],
)
def test_every_field_of_the_config_has_a_flag(module, cls, free_form):
    read = {f.name: f for f in config_fields(module, cls.__name__)}
    assert set(read) == {f.name for f in dataclasses.fields(cls)} - free_form
    defaults = cls()
    for name, f in read.items():
        if f.nested is None:
            assert f.default == getattr(defaults, name), name  # the source read equals the runtime default


def test_cache_flags_build_the_config_with_tuple_and_nested_corpus_fields():
    args = _args(["cache", "--out", "o", "--hooks", "blocks.0.hook_resid_post", "blocks.1.attn.hook_z",
                  "--corpus", "data/*.txt", "--seed", "3", "--text-field", "body", "--dtype", "bfloat16",
                  "--with-grads"])
    cfg = config_from_dict(CacheConfig, config_kwargs(args, "interp.activations.cache", "CacheConfig"))
    assert cfg == CacheConfig(
        hooks=("blocks.0.hook_resid_post", "blocks.1.attn.hook_z"),
        corpus=CorpusConfig(source="data/*.txt", seed=3, text_field="body"), dtype="bfloat16", with_grads=True)
    defaults = _args(["cache", "--out", "o"])
    assert config_from_dict(CacheConfig, config_kwargs(defaults, "interp.activations.cache", "CacheConfig")) \
        == CacheConfig()


def _train_overrides(argv: list[str]) -> dict:
    from cli.train import parse_params

    args = _args(["train", "--store", "s", "--out", "o", *argv])
    return {**config_kwargs(args, "interp.training.config", "TrainConfig"), "params": parse_params(args.param)}


def test_train_config_file_equals_the_same_flags(tmp_path):
    fields = {"architecture": "jumprelu", "hook": "blocks.0.hook_resid_post", "d_sae": 64, "betas": [0.5, 0.9],
              "lr": 1e-3, "grad_clip": None, "autocast": "bfloat16", "params": {"l0_coeff": 2.0}}
    (tmp_path / "cfg.json").write_text(json.dumps(fields))
    from_file = load_train_configs(tmp_path / "cfg.json")
    from_flags = load_train_configs(None, _train_overrides(
        ["--architecture", "jumprelu", "--hook", "blocks.0.hook_resid_post", "--d-sae", "64", "--betas", "0.5",
         "0.9", "--lr", "1e-3", "--grad-clip", "none", "--autocast", "bfloat16", "--param", "l0_coeff=2.0"]))
    assert from_file == from_flags
    assert from_file[0].betas == (0.5, 0.9) and from_file[0].grad_clip is None


def test_flags_override_every_entry_of_a_sweep_file(tmp_path):
    sweep = [{"name": "a", "k": 8, "params": {"aux_coeff": 0.1}}, {"name": "b", "k": 16}]
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    cfgs = load_train_configs(tmp_path / "sweep.json", _train_overrides(["--n-tokens", "8192", "-k", "4"]))
    assert [(c.name, c.k, c.n_tokens) for c in cfgs] == [("a", 4, 8192), ("b", 4, 8192)]
    assert cfgs[0].params == {"aux_coeff": 0.1} and cfgs[1].params == {}
    untouched = load_train_configs(tmp_path / "sweep.json", _train_overrides([]))
    assert [c.k for c in untouched] == [8, 16]


def test_bad_config_files_get_clear_errors(tmp_path):
    (tmp_path / "typo.json").write_text(json.dumps({"archtecture": "topk"}))
    with pytest.raises(InterpError, match="Did you mean 'architecture'"):
        load_train_configs(tmp_path / "typo.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(InterpError, match="non-empty list"):
        load_train_configs(tmp_path / "empty.json")
    with pytest.raises(InterpError, match="must be a list"):
        config_from_dict(CacheConfig, {"hooks": 3})


def test_configs_that_describe_saved_artefacts_are_frozen():
    from interp.dictionaries import DictionaryConfig

    for cls in (DictionaryConfig, TrainConfig, CacheConfig, CorpusConfig):
        assert typing.cast(typing.Any, cls).__dataclass_params__.frozen, cls
