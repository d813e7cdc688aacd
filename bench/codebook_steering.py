"""Does forcing a codebook code shift the next-token distribution the way that code's examples predict?

The acceptance criterion of codebook finetuning (docs/dictionaries.md, "Codebook finetuning"), measured
on the demo model. If ``--run-dir`` holds no finished run, the demo model is first finetuned with the
documented settings (codebooks at blocks.0.attn.hook_z, one per head, and blocks.1.hook_mlp_out;
512 codes, k 8, 300 steps of 8 x 128 tokens; ``--k``, ``--n-codes``, ``--sites`` and ``--steps`` change
them, and a finished run whose saved config differs from the requested one is refused). Then, on
``--n-heldout`` held-out contexts split in two halves:

- half A picks the codes: per site, the ``--n-codes-eval`` codes whose firings (at least
  ``--min-firings``, at under ``--max-fire-rate`` of positions) are followed by the most concentrated
  next token; a code's *predicted tokens* are the (up to 3) tokens that followed its firings in half A
  with a share of at least 10 %;
- half B gives the prompts: prefixes ending at every 16th position, ``--n-prompts`` of them on which the
  code did not fire at the last position.

Each chosen code is forced there (``--mode``, default ``replace``; last position only) and the mean
rise of the probability mass on its predicted tokens is compared with the rise, on the same prompts and
tokens, under ``--n-random`` random codes of the same codebook (drawn from the codes that fire in half A).
Prints a markdown table, a summary, and greedy generations with and without the best code forced.

Usage: python bench/codebook_steering.py --run-dir /tmp/cb-demo [--n-codes-eval 10] [--n-random 20]
       python bench/codebook_steering.py --run-dir /tmp/cb-k1 --k 1   # a fresh run dir per setting
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from itertools import islice
from pathlib import Path

import torch

from interp.codebooks import (
    CodebookFinetuneConfig,
    CodeUsage,
    code_usage,
    finetune_codebooks,
    fire_mask,
    generate_with_codes,
    load_run,
    target_mass,
    token_counts,
)
from interp.configs import config_to_dict
from interp.model.corpus import iter_contexts

SITES = ("blocks.0.attn.hook_z", "blocks.1.hook_mlp_out")


def finetune_config(sites: tuple[str, ...] = SITES, n_codes: int = 512, k: int = 8,
                    steps: int = 300) -> CodebookFinetuneConfig:
    """The documented demo-model run (docs/dictionaries.md, "On the demo model"), by default."""
    return CodebookFinetuneConfig(model="demo", sites=tuple(sites), n_codes=n_codes, k=k, steps=steps,
                                  batch_size=8, ctx_len=128)


CHECKED_FIELDS = ("model", "sites", "n_codes", "k", "steps", "batch_size", "ctx_len")


def ensure_run(run_dir: Path, cfg: CodebookFinetuneConfig) -> None:
    cfg_file = run_dir / "codebooks" / "codebooks.json"
    if (run_dir / "metrics.json").is_file() and cfg_file.is_file():
        saved = json.loads(cfg_file.read_text()).get("config") or {}
        wanted = config_to_dict(cfg)
        diff = {f: (saved.get(f), wanted[f]) for f in CHECKED_FIELDS if saved.get(f) != wanted[f]}
        if diff:
            raise SystemExit(f"{run_dir} was finetuned with other settings (saved, requested): {diff}; "
                             f"use another --run-dir")
        print(f"using the finished run in {run_dir}")
        return
    print(f"no finished run in {run_dir}: finetuning the demo model")
    t = time.perf_counter()
    finetune_codebooks(cfg, run_dir, progress=False)
    print(f"finetuned and saved in {time.perf_counter() - t:.0f} s")


def choose_codes(usage_a: CodeUsage, n_codes: int, vocab: int, min_firings: int, max_rate: float,
                 n_eval: int) -> list[tuple[float, int, int, torch.Tensor]]:
    """Up to ``n_eval`` (concentration, group, code, next-token counts) of the codes, over all groups of a
    site, whose next tokens in ``usage_a`` are the most concentrated on one token (the largest share)."""
    candidates = []
    for g in range(usage_a.codes.shape[2]):
        counts = torch.bincount(usage_a.codes[:, :, g].flatten(), minlength=n_codes)
        n_pos = usage_a.codes.shape[0] * usage_a.codes.shape[1]
        for code in (counts >= min_firings).nonzero().flatten().tolist():
            if counts[code] / n_pos >= max_rate:
                continue
            nxt = token_counts(usage_a, g, code, vocab, offset=1)
            if nxt.sum() >= min_firings:
                candidates.append((nxt.max().item() / nxt.sum().item(), g, code, nxt))
    candidates.sort(key=lambda c: (-c[0], -int(c[3].sum())))  # ties: more firings first
    return candidates[:n_eval]


def measure_site(model, cbs, site: str, u: CodeUsage, half: int, pool: list[tuple[int, int]],
                 args: argparse.Namespace, gen: torch.Generator) -> list[dict]:
    """One result row per chosen code of ``site``: its predicted tokens, and the mean rise of their mass
    when it, or each of the random codes, is forced on prompts where it did not fire."""
    n_codes, vocab = cbs[site].shape[1], model.info.d_vocab
    usage_a = CodeUsage(u.tokens[:half], u.codes[:half])
    rows = []
    for conc, g, code, nxt in choose_codes(usage_a, n_codes, vocab, args.min_firings, args.max_fire_rate,
                                           args.n_codes_eval):
        share = nxt.float() / nxt.sum()
        targets = [t for t in share.topk(args.n_targets).indices.tolist() if share[t] >= args.min_share]
        fired = fire_mask(u, g, code)
        prompts = [u.tokens[r, : t + 1] for r, t in pool if not fired[r, t]][: args.n_prompts]
        mass = target_mass(model, cbs, prompts, site, g, code, targets, mode=args.mode)
        rise = (mass.forced - mass.base).mean().item()
        used = (torch.bincount(usage_a.codes[:, :, g].flatten(), minlength=n_codes) > 0).nonzero().flatten()
        used = used[used != code]
        others = used[torch.randperm(len(used), generator=gen)[: args.n_random]].tolist()
        rand = []
        for c in others:
            m = target_mass(model, cbs, prompts, site, g, c, targets, mode=args.mode)
            rand.append((m.forced - m.base).mean().item())
        rand_t = torch.tensor(rand)
        row = dict(site=site, head=g, code=code, firings=int(nxt.sum()), concentration=conc,
                   targets=[[tok, round(share[t].item(), 3)] for tok, t in zip(model.token_strings(targets), targets)],
                   n_prompts=len(prompts), base_mass=mass.base.mean().item(), rise=rise, random_codes=others,
                   random_rises=rand, random_mean=rand_t.mean().item(),
                   random_p95=torch.quantile(rand_t, 0.95).item(), random_max=rand_t.max().item())
        rows.append(row)
        print(f"  {site} head {g} code {code}: rise {rise:+.4f} vs random mean {row['random_mean']:+.4f} "
              f"p95 {row['random_p95']:+.4f}", flush=True)
    return rows


def print_table(rows: list[dict], n_random: int, sites: tuple[str, ...] = SITES) -> None:
    print("| site | head | code | firings (A) | predicted next tokens (share) | base mass | rise when forced "
          "| random codes: mean rise | random p95 | beats p95 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        toks = ", ".join(f"{json.dumps(tok)} {sh:.2f}" for tok, sh in r["targets"])
        print(f"| {r['site']} | {r['head']} | {r['code']} | {r['firings']} | {toks} | {r['base_mass']:.4f} | "
              f"{r['rise']:+.4f} | {r['random_mean']:+.4f} | {r['random_p95']:+.4f} | "
              f"{'yes' if r['rise'] > r['random_p95'] else 'no'} |")
    print()
    for site in sites:
        sr = [r for r in rows if r["site"] == site]
        if not sr:
            print(f"{site}: no code passed the selection")
            continue
        beats = sum(r["rise"] > r["random_p95"] for r in sr)
        mean_rise = sum(r["rise"] for r in sr) / len(sr)
        mean_rand = sum(r["random_mean"] for r in sr) / len(sr)
        print(f"{site}: {beats}/{len(sr)} codes beat their random-code p95; mean rise {mean_rise:+.4f} "
              f"vs {mean_rand:+.4f} for random codes")
    beats = sum(r["rise"] > r["random_p95"] for r in rows)
    print(f"overall: {beats}/{len(rows)} chosen codes raise their predicted tokens' mass more than the 95th "
          f"percentile of {n_random} random codes of the same codebook")


def show_generation(model, cbs, best: dict, u: CodeUsage, pool: list[tuple[int, int]], mode: str,
                    n_new: int = 24) -> None:
    """Greedy continuations of a half-B prompt (where the code did not fire), with and without forcing."""
    fired = fire_mask(u, best["head"], best["code"])
    r, t = next((r, t) for r, t in pool if t <= 47 and not fired[r, t])
    prompt = model.tokenizer.decode(u.tokens[r, 1: t + 1].tolist())  # without BOS: to_tokens prepends it
    print(f"\nbest code: {best['site']} head {best['head']} code {best['code']} "
          f"(predicts {', '.join(json.dumps(tok) for tok, _ in best['targets'])})")
    print(f"prompt: {prompt!r}")
    plain = generate_with_codes(model, cbs, prompt, None, max_new_tokens=n_new)
    print(f"  nothing forced:            {plain.text!r}")
    for positions in ("last", "all"):
        forced = generate_with_codes(model, cbs, prompt, best["site"], best["head"], best["code"],
                                     positions=positions, max_new_tokens=n_new, mode=mode)  # type: ignore[arg-type]
        print(f"  forced ({positions}, {mode}):{' ' * (7 - len(positions))}{forced.text!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="/tmp/cb-demo", help="finetuning run; created here if not finished")
    p.add_argument("--sites", nargs="+", default=list(SITES), help="finetuning: codebook sites")
    p.add_argument("--n-codes", type=int, default=512, help="finetuning: codes per codebook")
    p.add_argument("--k", type=int, default=8, help="finetuning: codes selected per token and codebook")
    p.add_argument("--steps", type=int, default=300, help="finetuning: optimiser steps (8 x 128 tokens each)")
    p.add_argument("--n-heldout", type=int, default=256, help="held-out contexts (half select, half prompt)")
    p.add_argument("--n-codes-eval", type=int, default=10, help="codes tested per site")
    p.add_argument("--n-random", type=int, default=20, help="random codes of the same codebook per tested code")
    p.add_argument("--n-prompts", type=int, default=128, help="prompts per tested code")
    p.add_argument("--min-firings", type=int, default=20, help="firings (in half A) a tested code needs")
    p.add_argument("--max-fire-rate", type=float, default=0.5, help="skip codes firing at this share of positions")
    p.add_argument("--n-targets", type=int, default=3, help="predicted tokens per code (share >= --min-share)")
    p.add_argument("--min-share", type=float, default=0.1)
    p.add_argument("--mode", choices=["replace", "include"], default="replace",
                   help="replace: all k slots get the code (y = the code); include: it takes the last slot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    cfg = finetune_config(tuple(args.sites), args.n_codes, args.k, args.steps)
    ensure_run(run_dir, cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name in ("original", "snap", "finetuned", "finetuned_no_codebooks"):
        print(f"  {name:24s} held-out loss {metrics[name]['loss']:.3f}  accuracy {metrics[name]['accuracy']:.3f}")

    start = time.perf_counter()
    model, cbs = load_run(run_dir)
    assert cfg.heldout is not None
    contexts = iter_contexts(cfg.heldout, model.tokenizer, cfg.ctx_len, model.info.bos_token_id)
    held = torch.stack([c.tokens for c in islice(contexts, args.n_heldout)])
    half, seq = len(held) // 2, held.shape[1]
    usage = code_usage(model, cbs, held)
    gen = torch.Generator().manual_seed(args.seed)
    pool = [(r, t) for r in range(half, len(held)) for t in range(15, seq, 16)]
    pool = [pool[i] for i in torch.randperm(len(pool), generator=gen).tolist()]
    print(f"\n{len(held)} held-out contexts of {seq} tokens: {half} choose the codes, {len(held) - half} give "
          f"the prompts")
    rows = [row for site, u in usage.items() for row in measure_site(model, cbs, site, u, half, pool, args, gen)]
    print(f"measured in {time.perf_counter() - start:.0f} s\n")
    print_table(rows, args.n_random, tuple(args.sites))
    if rows:
        best = max(rows, key=lambda r: r["rise"] - r["random_p95"])
        show_generation(model, cbs, best, usage[best["site"]], pool, args.mode)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), rows=rows), indent=1))


if __name__ == "__main__":
    main()
