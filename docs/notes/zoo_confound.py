import torch, sys, math
torch.set_num_threads(1)
V, d, T, B = 512, 64, 48, 64
mode = sys.argv[1]; steps = int(sys.argv[2]); seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
g = torch.Generator().manual_seed(seed)
E = torch.randn(V, d, generator=g) / math.sqrt(d) * 3
M = torch.eye(d) if mode == "copy" else (torch.randn(d, d, generator=g) / math.sqrt(d) * 0.3 if mode == "small" else (torch.eye(d) + torch.randn(d, d, generator=g) / math.sqrt(d) * 0.5 if mode == "mixed" else torch.linalg.qr(torch.randn(d, d, generator=g))[0]))
def batch():
    rows = []
    for _ in range(B):
        row = [0]
        while len(row) < T:
            n = int(torch.randint(6, 24, (1,), generator=g)); r = torch.randint(1, V, (n,), generator=g).tolist(); row += r + r
        rows.append(row[:T])
    return torch.tensor(rows)
Wq, Wk, Wv, Wo = [torch.nn.Parameter(torch.randn(d, d, generator=g) * float(sys.argv[5] if len(sys.argv) > 5 else 0.02)) for _ in range(4)]
opt = torch.optim.Adam([Wq, Wk, Wv, Wo], lr=float(sys.argv[4]) if len(sys.argv) > 4 else 3e-3)
mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
def fwd(x):
    e = E[x]; prev = torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], 1) @ M.T
    h = e + prev
    s = (h @ Wq) @ (h @ Wk).transpose(1, 2) / math.sqrt(d)
    a = s.masked_fill(mask, -1e9).softmax(-1)
    out = a @ (h @ Wv) @ Wo
    return out @ E.T, a
def probe():
    n = 20; r = torch.randint(1, V, (16, n), generator=g); x = torch.cat([torch.zeros(16, 1, dtype=torch.long), r, r, r[:, :T-1-2*n]], 1)[:, :T]
    with torch.no_grad(): _, a = fwd(x)
    idx = torch.arange(n + 1, 2 * n + 1)
    return a[:, idx, idx - n + 1].mean().item()
for step in range(steps):
    x = batch(); logits, _ = fwd(x)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step()
    if (step + 1) % (steps // 10) == 0: print(mode, step + 1, round(loss.item(), 3), "ind", round(probe(), 3), flush=True)
