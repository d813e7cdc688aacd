"""``interp serve``: serve the dashboard locally, with a live prompt view that runs the model."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve dashboards and a live prompt view", description=__doc__)
    p.add_argument("--features", required=True, help="feature store directory (from interp analyze)")
    p.add_argument("--dictionary", required=True, help="dictionary directory the features came from")
    p.add_argument("--site", default=None, help="site directory (default: <features>/site, built if missing)")
    p.add_argument("--explanations", default=None, help="explanations JSON (feature -> text and scores)")
    p.add_argument("--model", default=None, help="model (default: the one named in the feature store)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--top-k", type=int, default=8, help="features listed per token")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (site build, model loading)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from interp.autointerp import load_explanations
    from interp.dictionaries import load_dictionary
    from interp.features import load_feature_store
    from interp.model.model import load_model
    from interp.site import build_dashboard
    from interp.site.serve import make_server

    fs = load_feature_store(args.features)
    site = Path(args.site) if args.site else Path(args.features) / "site"
    if not (site / "index.html").exists():
        build_dashboard(fs, site, args.explanations, progress=not args.no_progress)
    model = load_model(args.model or fs.manifest["model"]["name"], device=args.device)
    dictionary = load_dictionary(args.dictionary).to(args.device).eval()
    server = make_server(
        site,
        model,
        dictionary,
        fs.manifest.get("hook"),
        host=args.host,
        port=args.port,
        top_k=args.top_k,
        explanations=load_explanations(args.explanations or args.features),
    )
    host, port = str(server.server_address[0]), int(server.server_address[1])
    try:  # from the announcement on, Ctrl-C is how the server is stopped
        print(f"serving {site} at http://{host}:{port}/  (prompt view: http://{host}:{port}/prompt.html)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:  # not an interruption to report
        print("interp serve: stopped.")
    finally:
        server.server_close()
    return 0
