"""What a training run reports: the JSONL log (and W&B when asked for) and the progress bar."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from interp.configs import config_to_dict
from interp.progress import progress_bar as make_bar
from interp.training.slot import Slot

log = logging.getLogger(__name__)


class TrainLog:
    """JSONL log (always) plus wandb when asked for and importable. ``name`` is the log file: each rank
    that trains dictionaries of its own writes one (``train_log.jsonl`` on rank 0)."""

    def __init__(self, out: Path, slots: list[Slot], start: int, name: str = "train_log.jsonl"):
        out.mkdir(parents=True, exist_ok=True)
        self.slots = slots
        self.path = out / name
        if self.path.exists():  # drop lines past the checkpoint we resume from
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        self.file = open(self.path, "a")
        self.wandb = None
        project = slots[0].cfg.wandb_project if slots else None
        if project:
            try:
                import wandb

                self.wandb = wandb.init(project=project, config={s.name: config_to_dict(s.cfg) for s in slots})
            except ImportError:
                log.warning("wandb_project is set but wandb is not installed; logging to %s only", self.path)

    def write(self, step: int, rate: float) -> None:
        for s in self.slots:
            last = s.recent[-1] if s.recent else {}
            dead = float((s.since_fired >= s.dead_tokens).float().mean())
            row = {
                "step": step,
                "dictionary": s.name,
                "lr": s.opt.param_groups[0]["lr"],
                "tokens_per_s": rate,
                "dead_fraction": dead,
                **last,
            }
            self.file.write(json.dumps(row) + "\n")
            if self.wandb is not None:
                self.wandb.log({f"{s.name}/{k}": v for k, v in row.items() if k != "dictionary"}, step=step)
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def progress_bar(enabled: bool, total: int, initial: int) -> Any:
    """The training bar (see ``interp.progress``), or None when disabled."""
    return make_bar(total, "train", initial=initial) if enabled else None
