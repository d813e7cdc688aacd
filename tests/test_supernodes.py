"""Supernodes and feature links without a browser: collapsed edges are the sums of the members' edges, decoder-direction
clusters group planted near-duplicates and keep orthogonal features apart, a saved grouping round-trips through a
file and ``interp dashboard --supernodes``, circuit-tracer's ``qParams.supernodes`` survives export and import, and
feature nodes link to the feature pages of their own dictionary only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from graph_site import HOOK, PROMPT, graph_site
from transcoders import D, N, clt, per_layer

from cli.main import main
from interp.circuits.auto_supernodes import SupernodeConfig, auto_supernodes, decoder_directions
from interp.circuits.graph import CircuitGraph, Edge, Node, save_graph
from interp.circuits.replacement import TranscoderSet
from interp.circuits.supernodes import (
    apply_groupings,
    collapse_supernodes,
    graph_key,
    group_nodes,
    load_supernodes,
    save_supernodes,
    supernodes_of,
)
from interp.errors import InterpError
from interp.formats.circuit_tracer import from_circuit_tracer, to_circuit_tracer

TORCH_THREADS = 1  # see conftest.py


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir, corpus_dir, tiny_model):
    return graph_site(tmp_path_factory.mktemp("supernodes"), tiny_model_dir, corpus_dir, tiny_model)


def _independent_sums(graph: CircuitGraph, owner: dict[str, str]) -> tuple[dict, dict]:
    """(source, target) -> summed score after mapping members to their group, and group -> internal sum."""
    sums: dict[tuple[str, str], float] = {}
    internal: dict[str, float] = {}
    for e in graph.edges:
        s, t = owner.get(e.source, e.source), owner.get(e.target, e.target)
        if s == t:
            internal[s] = internal.get(s, 0.0) + e.score
        else:
            sums[(s, t)] = sums.get((s, t), 0.0) + e.score
    return sums, internal


def test_collapsed_edges_are_the_sums_of_members_edges(site):
    graph = site.graph
    feats = [n for n in graph.nodes if n.kind == "feature"]
    errs = [n for n in graph.nodes if n.kind == "error"]
    assert len(feats) >= 6 and errs
    # one group across layers and positions, one of a layer's features, one mixing a feature and an error node
    groups = [("mixed layers", [feats[0].id, feats[-1].id, feats[len(feats) // 2].id]),
              ("pair", [feats[1].id, feats[2].id]), ("with error", [feats[3].id, errs[0].id])]
    grouped = group_nodes(graph, groups)
    assert graph.metadata.get("supernodes") is None and len(supernodes_of(grouped)) == 3
    view = collapse_supernodes(grouped)
    owner = {m: f"supernode-{k}" for k, (_, ms) in enumerate(groups) for m in ms}
    want, want_internal = _independent_sums(graph, owner)
    got = {(e.source, e.target): e.score for e in view.edges}
    assert set(got) == set(want) and len(view.edges) == len(got)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12)
    merged = [k for k in got if sum((owner.get(e.source, e.source), owner.get(e.target, e.target)) == k
                                    for e in graph.edges) > 1]
    assert len(merged) >= 3 and any("supernode-0" in k for k in merged)  # real sums happened, both ways
    assert view.internal == pytest.approx({f"supernode-{k}": want_internal.get(f"supernode-{k}", 0.0)
                                           for k in range(3)})
    total = sum(e.score for e in graph.edges)
    assert sum(got.values()) + sum(view.internal.values()) == pytest.approx(total)
    ids = [n.id for n in view.nodes]
    assert not set(owner) & set(ids) and ids[-3:] == ["supernode-0", "supernode-1", "supernode-2"]
    sn = view.nodes[-3]
    assert sn.label == "mixed layers" and sn.kind == "supernode" and sn.layer == min(feats[0].layer, feats[-1].layer)
    assert sn.score == pytest.approx(sum(graph.node(m).score for m in groups[0][1]))


def test_groupings_are_checked():
    nodes = [Node("a", "feature", 0, feature=0), Node("b", "feature", 0, feature=1), Node("c", "logit", 1)]
    graph = CircuitGraph(nodes, [Edge("a", "c", score=1.0), Edge("b", "c", score=2.0)])
    with pytest.raises(InterpError, match="does not have: zz"):
        group_nodes(graph, [("g", ["a", "zz"])])
    with pytest.raises(InterpError, match="in two supernodes"):
        group_nodes(graph, [("g", ["a", "b"]), ("h", ["b"])])
    with pytest.raises(InterpError, match="empty name"):
        group_nodes(graph, [{"name": " ", "members": ["a"]}])
    with pytest.raises(InterpError, match="no members"):
        group_nodes(graph, [("g", [])])
    view = collapse_supernodes(graph, [("ab", ["a", "b"])])
    assert [(e.source, e.target, e.score) for e in view.edges] == [("supernode-0", "c", 3.0)]


def _planted(fp: str) -> tuple[list, torch.Tensor]:
    """Skip transcoders whose layer-1 features 0, 1, 2 write near-duplicates of one direction a (cosine > 0.98),
    features 3 and 4 write directions orthogonal to a and to each other, and layer 0's feature 5 writes a too."""
    ds = per_layer("skip_transcoder", fp, k=4)
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(D, 3, generator=g))
    a, b, c = q.T
    with torch.no_grad():
        for f in range(3):
            noise = torch.randn(D, generator=g)
            ds[1].W_dec[f] = a + 0.08 * (noise - (noise @ a) * a) / noise.norm()
        ds[1].W_dec[3], ds[1].W_dec[4] = b, c
        ds[0].W_dec[5] = 2.0 * a
    return ds, a


def test_clusters_group_near_duplicate_directions_and_separate_orthogonal_ones(tiny_model):
    ds, a = _planted(tiny_model.info.fingerprint)
    ts = TranscoderSet(ds, tiny_model)
    ids = [(1, 0, 2), (1, 1, 3), (1, 2, 3), (1, 3, 1), (1, 4, 4), (1, 0, 5), (0, 5, 1), (0, 6, 2)]
    nodes = [Node(f"f{l}.{f}@{p}", "feature", l, position=p, feature=f, score=0.1 * (k + 1))
             for k, (l, f, p) in enumerate(sorted(ids))]
    nodes.append(Node("logit7@5", "logit", 2, position=5, feature=7))
    graph = CircuitGraph(nodes, [Edge(n.id, "logit7@5", score=1.0) for n in nodes[:-1]])
    members = [set(sn.members) for sn in auto_supernodes(graph, ts, SupernodeConfig(supernode_threshold=0.9))]
    assert members == [{"f1.0@2", "f1.0@5", "f1.1@3", "f1.2@3"}]  # 3, 4 and layer 0's features stay apart
    across = auto_supernodes(graph, ts, SupernodeConfig(supernode_threshold=0.9, supernodes_across_layers=True))
    assert [set(sn.members) for sn in across] == [{"f1.0@2", "f1.0@5", "f1.1@3", "f1.2@3", "f0.5@1"}]
    # a threshold above the near-duplicates' cosine leaves only the one feature seen at two positions
    tight = auto_supernodes(graph, ts, SupernodeConfig(supernode_threshold=0.9999))
    assert [set(sn.members) for sn in tight] == [{"f1.0@2", "f1.0@5"}]
    name = auto_supernodes(graph, ts)[0].name
    assert name == "f1.2@3 (+3)"  # named after its most influential member (score 0.6)
    directions = decoder_directions(ts, [(1, 0), (1, 3)])
    cos = torch.nn.functional.cosine_similarity(directions[0], a, dim=0)
    assert cos > 0.99 and abs(float(directions[1] @ a)) < 1e-5
    assert group_nodes(graph, across).metadata["supernodes"][0]["name"] == across[0].name
    with pytest.raises(InterpError, match=r"in \(0, 1\]"):
        SupernodeConfig(supernode_threshold=0.0)


def test_a_cross_layer_features_direction_sums_its_writes(tiny_model):
    ts = TranscoderSet([clt(tiny_model.info.fingerprint)], tiny_model)
    got = decoder_directions(ts, [(0, 3), (1, 3)])
    torch.testing.assert_close(got[0], ts.decoder(0, 0)[3] + ts.decoder(0, 1)[3])
    torch.testing.assert_close(got[1], ts.decoder(1, 1)[3])
    assert N == ts.n_features(0)


def test_saved_grouping_round_trips_through_a_file_and_the_dashboard(site, tmp_path, capsys):
    graph = site.graph
    feats = [n.id for n in graph.nodes if n.kind == "feature"]
    grouped = group_nodes(graph, [("first", feats[:2]), ("second", feats[2:5])])
    path = save_supernodes(grouped, tmp_path / "grouping.json", title="tiny graph")
    loaded = load_supernodes(path)
    assert loaded.key == graph_key(graph) and loaded.title == "tiny graph"
    assert [sn.to_dict() for sn in loaded.supernodes] == grouped.metadata["supernodes"]
    other = CircuitGraph([Node("x", "feature", 0)], [], {})
    again = apply_groupings([other, graph], [path])
    assert again[0] is other and again[1].metadata["supernodes"] == grouped.metadata["supernodes"]
    with pytest.raises(InterpError, match="not among the graphs"):
        apply_groupings([other], [path])
    # the command line: the site's graph page starts from the file's grouping
    save_graph(graph, tmp_path / "g" / "graph.json")
    assert main(["dashboard", "--graphs", str(tmp_path / "g"), "--supernodes", str(path), "--out",
                 str(tmp_path / "site")]) == 0
    text = (tmp_path / "site" / "data" / "graphs" / "0.js").read_text()
    payload = json.loads(text[len("window.INTERP_GRAPH = "):-2])
    assert payload["key"] == graph_key(graph) and payload["supernodes"] == grouped.metadata["supernodes"]
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    assert main(["dashboard", "--graphs", str(tmp_path / "g"), "--supernodes", str(tmp_path / "bad.json"), "--out",
                 str(tmp_path / "site2")]) == 2
    assert "not a supernode grouping" in capsys.readouterr().err


def test_circuit_tracer_supernodes_survive_export_and_import(site):
    graph = site.graph
    feats = [n for n in graph.nodes if n.kind == "feature"]
    token = next(n for n in graph.nodes if n.kind == "token")
    grouped = group_nodes(graph, [("alpha", [feats[0].id, feats[1].id]), ("beta", [feats[2].id, token.id])])
    ct = to_circuit_tracer(grouped, "tiny")
    f0 = f"{feats[0].layer}_{feats[0].feature}_{feats[0].position}"
    assert ct["qParams"]["supernodes"][0][:2] == ["alpha", f0] and len(ct["qParams"]["supernodes"]) == 2
    assert ct["qParams"]["supernodes"][1][2].startswith("E_")
    assert set(ct["qParams"]["pinnedIds"]) == {i for sn in ct["qParams"]["supernodes"] for i in sn[1:]}
    back = from_circuit_tracer(ct)
    assert back.metadata["supernodes"] == grouped.metadata["supernodes"]
    assert to_circuit_tracer(back, "tiny")["qParams"] == ct["qParams"]  # and out again, unchanged
    # circuit-tracer's viewer drops members a graph lacks; so does the import (and the groups left empty)
    ct["qParams"]["supernodes"] += [["gone", "9_9_9"], ["beta2", f0, "9_9_9"]]
    assert from_circuit_tracer(ct).metadata["supernodes"] == grouped.metadata["supernodes"]
    assert "supernodes" not in graph.metadata and to_circuit_tracer(graph, "t")["qParams"]["supernodes"] == []


def test_feature_nodes_link_to_their_own_dictionarys_pages(site, tmp_path):
    from interp.site.build import build_dashboard

    fs, graph = site.features, site.graph
    assert fs.manifest["hook"] == HOOK
    index = build_dashboard(fs, tmp_path / "site", graphs=[graph], progress=False)
    data = index.parent / "data"
    payload = json.loads((data / "graphs" / "0.js").read_text()[len("window.INTERP_GRAPH = "):-2])
    linked = {n["id"]: n["page"] for n in payload["nodes"] if "page" in n}
    layer1 = {n.id: n.attrs["latent"] for n in graph.nodes if n.kind == "feature" and n.layer == 1}
    assert linked == layer1 and layer1 and any(n.kind == "feature" and n.layer == 0 for n in graph.nodes)
    node_id, latent = max(layer1.items(), key=lambda kv: abs(graph.node(kv[0]).score))
    rec = json.loads((data / "features" / f"{latent}.js").read_text()[len("window.INTERP_FEATURE = "):-2])
    row = next(r for r in rec["graphs"] if r["node"] == node_id)
    node = graph.node(node_id)
    assert row["g"] == 0 and row["influence"] == pytest.approx(node.score)
    assert row["activation"] == pytest.approx(node.attrs["activation"])
    assert row["context"][-1] == graph.metadata["prompt_tokens"][node.position] and row["prompt"] == PROMPT
    unlinked = [i for i in range(fs.n_features) if i not in set(layer1.values())]
    assert all("graphs" not in json.loads((data / "features" / f"{i}.js").read_text()[23:-2]) for i in unlinked)
    # another transcoder on the same hook (retrained: other weights, other config) links nowhere
    other = dict(graph.metadata, dictionaries={k: "0" * 16 for k in graph.metadata["dictionaries"]})
    index = build_dashboard(fs, tmp_path / "site2", graphs=[CircuitGraph(graph.nodes, graph.edges, other)],
                            progress=False)
    assert '"page"' not in (index.parent / "data" / "graphs" / "0.js").read_text()


def test_with_every_layers_store_every_layers_feature_nodes_link(site, tmp_path):
    from interp.site.build import build_dashboard

    graph = site.graph
    index = build_dashboard([site.features, site.features0], tmp_path / "site", graphs=[graph], progress=False)
    top = index.parent
    payload = json.loads((top / "data" / "graphs" / "0.js").read_text()[len("window.INTERP_GRAPH = "):-2])
    linked = {n["id"]: (n.get("store", 0), n["page"]) for n in payload["nodes"] if "page" in n}
    feats = [n for n in graph.nodes if n.kind == "feature"]
    assert {n.layer for n in feats} == {0, 1}
    assert linked == {n.id: (1 - n.layer, n.attrs["latent"]) for n in feats}  # layer 1 first, layer 0 second
    # the second store's pages and data live under stores/1/, loading the top's assets; its features list the graph
    sub = top / "stores" / "1"
    assert '<script src="../../feature.js"></script>' in (sub / "feature.html").read_text()
    assert not (sub / "feature.js").exists() and not (sub / "graph.html").exists()
    meta = json.loads((sub / "data" / "meta.js").read_text()[len("window.INTERP_META = "):-2])
    assert meta["hook"] == HOOK.replace("1", "0", 1) and meta["root"] == "../../" and meta["store"] == 1
    assert [s["href"] for s in meta["stores"]] == ["", "stores/1/"]
    node = max((n for n in feats if n.layer == 0), key=lambda n: abs(n.score))
    rec = json.loads((sub / "data" / "features" / f"{node.attrs['latent']}.js").read_text()[23:-2])
    assert any(r["node"] == node.id and r["influence"] == pytest.approx(node.score) for r in rec["graphs"])
    # explanations given explicitly describe one store
    with pytest.raises(InterpError, match="exactly one feature store"):
        build_dashboard([site.features, site.features0], tmp_path / "site2", {"0": "x"}, progress=False)


def test_attribution_graph_command_groups_automatically(site, tiny_model_dir, tiny_model, tmp_path, capsys):
    from interp.circuits.graph import load_graph
    from interp.dictionaries import save_dictionary

    dirs = [str(save_dictionary(d, tmp_path / f"tc{i}")) for i, d in enumerate(site.transcoders)]
    out = tmp_path / "graph"
    assert main(["circuit", "attribution-graph", "--model", str(tiny_model_dir), "--transcoders", *dirs, "--prompt",
                 PROMPT, "--max-feature-nodes", "32", "--node-threshold", "0.99", "--edge-threshold", "0.99", "--out",
                 str(out), "--circuit-tracer", "--slug", "tiny",
                 "--auto-supernodes", "--supernode-threshold", "0.95"]) == 0
    assert "supernodes (decoder cosine >= 0.95)" in capsys.readouterr().out
    graph = load_graph(out / "graph.json")
    cfg = SupernodeConfig(supernode_threshold=0.95)
    want = auto_supernodes(graph, TranscoderSet(site.transcoders, tiny_model), cfg)
    assert want and graph.metadata["supernodes"] == [sn.to_dict() for sn in want]
    assert graph.metadata["supernodes_config"]["supernode_threshold"] == 0.95
    ct = json.loads((out / "tiny.json").read_text())
    assert [sn[0] for sn in ct["qParams"]["supernodes"]] == [sn.name for sn in want]
    assert main(["circuit", "attribution-graph", "--model", str(tiny_model_dir), "--transcoders", *dirs, "--prompt",
                 PROMPT, "--out", str(tmp_path / "bad"), "--auto-supernodes", "--supernode-threshold", "1.5"]) == 2
    assert "in (0, 1]" in capsys.readouterr().err and not Path(tmp_path / "bad" / "graph.json").exists()
