"""Ground-truth circuits that come from outside the methods: a model's per-head card, and the literature.

- **Per-head card**: the demo model's ``zoo_card.json`` records, for every head, its previous-token and
  induction scores (mean attention to the previous token on natural text; to the token after the previous
  occurrence on ``[BOS] r r``), measured by the zoo's probes from the attention patterns alone. The induction
  circuit's ground truth is every head whose previous-token or induction score reaches ``threshold``. Nothing
  here reruns a probe: the card is read as data.
- **Literature**: the published node sets of IOI and greater-than (GPT-2 small) and docstring (attn-only-4l),
  usable only on a model of that shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interp.circuits.evaluate import GroundTruth, ground_truth
from interp.circuits.literature import GROUND_TRUTH
from interp.errors import InterpError
from interp.io import read_json

CARD_NAME = "zoo_card.json"
CARD_FIELDS = ("previous_token", "induction")
LITERATURE_SHAPES = {"ioi": (12, 12), "greater-than": (12, 12), "docstring": (4, 8)}
"""Task -> (layers, heads) of the model its published circuit was found in."""


def card_path(model_name: str) -> Path:
    """Where the card of a model loaded by name sits: the demo's directory, or a local checkpoint's."""
    if model_name == "demo":
        from interp.model import DEMO_DIR

        return Path(DEMO_DIR) / CARD_NAME
    return Path(model_name).expanduser() / CARD_NAME


def card_ground_truth(card: str | Path | dict[str, Any], threshold: float = 0.3,
                      fields: tuple[str, ...] = CARD_FIELDS) -> GroundTruth:
    """Heads whose card score in any of ``fields`` is at least ``threshold`` (see the module docstring)."""
    raw = card if isinstance(card, dict) else read_json(card, "model card")
    heads = raw.get("heads")
    if not isinstance(heads, list) or not heads or not all(f in heads[0] for f in fields):
        raise InterpError(
            f"The card {'' if isinstance(card, dict) else card} has no per-head {'/'.join(fields)} scores. Cards "
            "written by the current zoo recipe (`interp zoo train`) have them; pass ground-truth nodes instead."
        )
    chosen = [f"a{h['layer']}.h{h['head']}" for h in heads if any(float(h[f]) >= threshold for f in fields)]
    if not chosen:
        best = {f: max(float(h[f]) for h in heads) for f in fields}
        raise InterpError(
            f"No head of the card reaches {threshold} on {'/'.join(fields)} (best: {best}); the model has no such "
            "heads, so there is no ground truth for its induction circuit at this threshold."
        )
    return ground_truth(chosen, None, ("head",), f"per-head card ({'/'.join(fields)} >= {threshold})")


def literature_ground_truth(task: str, model: Any) -> GroundTruth:
    """The published circuit of ``task`` (ioi, greater-than, docstring) on a model of the published shape."""
    if task not in GROUND_TRUTH:
        raise InterpError(f"No published circuit for task {task!r}; published: {', '.join(GROUND_TRUTH)}.")
    shape = (model.info.n_layers, model.info.n_heads)
    if shape != LITERATURE_SHAPES[task]:
        raise InterpError(
            f"The published {task} circuit is for a model of {LITERATURE_SHAPES[task][0]} layers x "
            f"{LITERATURE_SHAPES[task][1]} heads; {model.info.name!r} has {shape[0]} x {shape[1]}."
        )
    kinds = ("head", "mlp") if any(n.startswith("m") for n in GROUND_TRUTH[task]) else ("head",)
    return ground_truth(GROUND_TRUTH[task], None, kinds, f"published {task} circuit")
