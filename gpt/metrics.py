"""Where a run's numbers go: the console, <out_dir>/metrics.jsonl and, if asked, Weights & Biases."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from gpt.errors import GPTError


class MetricsLogger:
    """One JSON object per line in metrics.jsonl (`"kind": "train"` or `"eval"`), mirrored to the console and W&B."""

    def __init__(self, out_dir: str | Path, config: dict[str, Any], resume: bool,
                 wandb_log: bool = False, wandb_project: str = "gpt", wandb_run_name: str = "run",
                 wandb_id: Optional[str] = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a" if resume else "w", encoding="utf-8")
        self.wandb = None
        self.wandb_id = wandb_id
        if wandb_log:
            self._start_wandb(out_dir, config, wandb_project, wandb_run_name, wandb_id)

    def _start_wandb(self, out_dir: str | Path, config: dict[str, Any], project: str, name: str, run_id: Optional[str]) -> None:
        try:
            import wandb
        except ImportError:
            raise GPTError("--wandb_log=True needs the wandb package: pip install wandb (or run with --wandb_log=False).") from None
        if not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
            os.environ["WANDB_MODE"] = "offline"
            print(f"wandb: no API key and no WANDB_MODE set, logging offline under {out_dir}/wandb "
                  "(upload later with `wandb sync`, or `wandb login` to log online).")
        self.wandb = wandb.init(project=project, name=name, config=config, dir=str(out_dir),
                                id=run_id, resume="allow" if run_id else None)
        self.wandb_id = self.wandb.id

    def _write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k not in ("kind", "iter")}, step=record["iter"])

    def train(self, it: int, loss: float, lr: float, dt_ms: float, tokens_per_s: float) -> None:
        self._write({"kind": "train", "iter": it, "loss": loss, "lr": lr, "dt_ms": dt_ms, "tokens_per_s": tokens_per_s,
                     "time": time.time()})
        print(f"iter {it}: loss {loss:.4f}, lr {lr:.2e}, time {dt_ms:.1f}ms, {tokens_per_s:,.0f} tok/s")

    def eval(self, it: int, train_loss: float, val_loss: float) -> None:
        self._write({"kind": "eval", "iter": it, "train_loss": train_loss, "val_loss": val_loss, "time": time.time()})
        print(f"step {it}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")
        sys.stdout.flush()

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
