"""TopK training throughput of peer libraries (sparsify, SAELens), each run in its own virtualenv.

The peers are never installed in interp's environment: each lives in a side venv (made once by hand,
see ``SETUP``) and is driven through a subprocess running a small script written here. Every script
trains the same TopK SAE on the same data as ``bench/train.py``: ``torch.manual_seed(0)`` then
``torch.randn(batch, d_in)``, fp32 on CPU, Adam, the library's own training forward pass and its own
decoder constraints, AuxK off (no dead latents). A venv that is absent is skipped with a message.

Venv paths come from ``--sparsify-venv`` / ``--saelens-venv`` or ``INTERP_SPARSIFY_VENV`` /
``INTERP_SAELENS_VENV`` (defaults under /tmp/peers).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import NamedTuple

SETUP = """\
echo "torch==2.13.0" > /tmp/peers/constraints.txt
python3 -m venv /tmp/peers/venv-sparsify && /tmp/peers/venv-sparsify/bin/pip install \\
    -c /tmp/peers/constraints.txt torch==2.13.0 eai-sparsify      # PyPI 'sparsify' is another project
python3 -m venv /tmp/peers/venv-sae-lens && /tmp/peers/venv-sae-lens/bin/pip install \\
    -c /tmp/peers/constraints.txt torch==2.13.0 sae-lens"""

DEFAULT_VENVS = {"sparsify": "/tmp/peers/venv-sparsify", "saelens": "/tmp/peers/venv-sae-lens"}
ENV_VARS = {"sparsify": "INTERP_SPARSIFY_VENV", "saelens": "INTERP_SAELENS_VENV"}

_COMMON = """
import json, sys, time, torch
d_in, d_sae, k, batch, steps, threads, fused = (int(a) for a in sys.argv[1:8])
torch.set_num_threads(threads)
torch.manual_seed(0)
x = torch.randn(batch, d_in)
"""

_SCRIPTS = {
    "sparsify": _COMMON
    + """
import importlib.metadata as md
from sparsify import SparseCoder, SparseCoderConfig
sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k))
opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=bool(fused))
def step():
    out = sae(x)
    opt.zero_grad(set_to_none=True)
    out.fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    sae.set_decoder_norm_to_unit_norm()
version = md.version("eai-sparsify")
""",
    "saelens": _COMMON
    + """
import importlib.metadata as md, warnings
warnings.filterwarnings("ignore")
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=bool(fused))
def step():
    out = sae.training_forward_pass(TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False))
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)  # as SAELens's trainer does every step
    opt.step()
version = md.version("sae-lens")
""",
}
_TIMING = """
step()
t = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"tokens_per_s": batch * steps / (time.perf_counter() - t), "version": version}))
"""


class PeerResult(NamedTuple):
    """One peer's measurement, or why there is none."""

    name: str
    """``sparsify`` or ``saelens``."""
    tokens_per_s: float | None
    """Training throughput; None when skipped or failed."""
    detail: str
    """The library version measured, or the reason it was skipped."""


def venv_for(name: str, given: str | None = None) -> Path:
    """The venv of peer ``name``: the argument, else its environment variable, else the default."""
    return Path(given or os.environ.get(ENV_VARS[name]) or DEFAULT_VENVS[name])


def measure(
    name: str,
    venv: Path,
    *,
    d_in: int,
    d_sae: int,
    k: int,
    batch: int,
    steps: int,
    threads: int,
    fused_adam: bool = False,
) -> PeerResult:
    """Run peer ``name``'s training script in ``venv`` and parse its throughput; ``fused_adam`` swaps the
    library's plain torch Adam for the fused kernel."""
    python = venv / "bin" / "python"
    if not python.exists():
        return PeerResult(name, None, f"skipped: no venv at {venv} (set {ENV_VARS[name]}; setup in bench/peers.py)")
    args = [str(v) for v in (d_in, d_sae, k, batch, steps, threads, int(fused_adam))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [str(python), "-c", _SCRIPTS[name] + _TIMING, *args], capture_output=True, text=True, env=env, timeout=1800
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return PeerResult(name, None, f"failed: {tail[0]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return PeerResult(name, float(out["tokens_per_s"]), f"{name} {out['version']}")
