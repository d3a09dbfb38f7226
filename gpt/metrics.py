"""Where a run's numbers go: the console, <out_dir>/metrics.jsonl, loss.png, summary.json and, if asked, W&B.

Only rank 0 builds a MetricsLogger, so only rank 0 prints progress. A resumed run first rewinds
metrics.jsonl to its checkpoint (a killed run's later lines are replaced, not duplicated), then
appends to it and plots the whole history.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from gpt.atomic import write_text_atomic
from gpt.mfu import MFU
from gpt.summary import format_duration, format_summary, run_summary


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far in MiB: the CUDA caching allocator's max allocated on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def rewind_metrics(path: Path, resume_iter: int) -> None:
    """Drop metrics.jsonl lines the resumed run will write again.

    Train lines for steps >= resume_iter and eval lines after it are replayed by the
    resumed run; the eval at resume_iter itself was logged before the checkpoint. A
    torn last line from a kill mid-write is dropped too.
    """
    if not path.is_file():
        return
    kept = [r for r in read_records(path)
            if (r.get("kind") == "eval" and r.get("iter", 0) <= resume_iter)
            or (r.get("kind") != "eval" and r.get("iter", 0) < resume_iter)]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def read_records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a line cut short by a crash mid-write is skipped, not fatal."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class MetricsLogger:
    """One JSON object per line in metrics.jsonl (`"kind": "train"` or `"eval"`), mirrored to the console and W&B.

    `resumed_at` is the iteration a resumed run continues from (None for a fresh run). `mfu`
    turns tokens/s into model FLOPs utilisation; `max_iters` gives the ETA; `tokens_per_iter`
    the tokens seen. `close()` must be called; `finish()` first, when the run ended normally.
    """

    def __init__(self, out_dir: str | Path, config: dict[str, Any], resumed_at: Optional[int] = None,
                 wandb_log: bool = False, wandb_project: str = "gpt", wandb_run_name: str = "run",
                 wandb_id: Optional[str] = None, max_iters: Optional[int] = None, tokens_per_iter: int = 0,
                 device: torch.device = torch.device("cpu"), mfu: Optional[MFU] = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self.plot_path = self.out_dir / "loss.png"
        self.max_iters, self.tokens_per_iter, self.device, self.mfu = max_iters, tokens_per_iter, device, mfu
        self.train_steps: dict[int, dict[str, Any]] = {}
        self.evals: dict[int, dict[str, Any]] = {}
        if resumed_at is not None and self.path.exists():
            rewind_metrics(self.path, resumed_at)
            for record in read_records(self.path):
                self._remember(record)
        self.session_train: list[dict[str, Any]] = []
        self.first_log: Optional[tuple[float, int]] = None  # (time, iter) of this session's first train line
        self.can_plot = True
        self.file = open(self.path, "a" if resumed_at is not None else "w", encoding="utf-8")
        self.wandb = None
        self.wandb_id = wandb_id
        if wandb_log:
            from gpt.wandb_run import log_record, start_run  # imports wandb: only when asked for
            self.wandb = start_run(self.out_dir, config, wandb_project, wandb_run_name, wandb_id)
            self._log_wandb = log_record
            self.wandb_id = self.wandb.id
        if mfu is not None:
            print(f"MFU against {mfu.peak.flops / 1e12:,.3g} TFLOP/s per device ({mfu.peak.source}), "
                  f"{mfu.flops_per_token / 1e6:,.3g} MFLOPs per token", flush=True)

    # -- records ----------------------------------------------------------------------------------------
    def _remember(self, record: dict[str, Any]) -> None:
        """Keep a record in the history; it replaces any record of its kind at its iteration or later."""
        series = self.train_steps if record["kind"] == "train" else self.evals
        for i in [i for i in series if i >= record["iter"]]:
            del series[i]
        series[record["iter"]] = record

    def _write(self, record: dict[str, Any]) -> None:
        self._remember(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self._log_wandb(self.wandb, record)

    def train(self, it: int, loss: float, lr: float, dt_ms: float, tokens_per_s: float,
              grad_norm: Optional[float] = None, data_ms: Optional[float] = None, note: Optional[str] = None) -> None:
        """Log training step `it`: its loss (global batch), learning rate, duration and throughput,
        the gradient norm before clipping and the time spent waiting for data, when known; `note`
        (e.g. a straggler: "slowest rank 3: 2.1x median") ends the progress line and is kept in the record."""
        now = time.perf_counter()
        record = {"kind": "train", "iter": it, "loss": loss, "lr": lr, "dt_ms": dt_ms, "tokens_per_s": tokens_per_s}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        if data_ms is not None:
            record["data_ms"] = data_ms
        if note:
            record["note"] = note
        if self.mfu is not None:
            record["mfu"] = self.mfu.of(tokens_per_s)
        record["mem_mib"] = peak_memory_mib(self.device)
        record["time"] = time.time()
        self._write(record)
        self.session_train.append(record)
        parts = [f"iter {it}" + (f"/{self.max_iters}" if self.max_iters else "") + f": loss {loss:.4f}",
                 f"lr {lr:.2e}", f"{dt_ms:.1f} ms/iter", f"{tokens_per_s:,.0f} tok/s"]
        if "mfu" in record:
            parts.append(f"MFU {100 * record['mfu']:.2f}%")
        if grad_norm is not None:
            parts.append(f"grad norm {grad_norm:.3g}")
        if data_ms is not None and dt_ms > 0:
            parts.append(f"data {100 * data_ms / dt_ms:.0f}%")
        parts.append(f"mem {record['mem_mib']:,.0f} MiB")
        if self.max_iters:
            parts.append(f"ETA {format_duration(self._eta(it, now, dt_ms / 1000.0))}")
        if note:
            parts.append(note)
        print(" | ".join(parts), flush=True)

    def _eta(self, it: int, now: float, dt: float) -> float:
        """Seconds to max_iters at the wall-clock pace since this session's first logged step (evals included)."""
        if self.first_log is None:
            self.first_log = (now, it)
        t0, it0 = self.first_log
        per_iter = (now - t0) / (it - it0) if it > it0 else dt
        return max(self.max_iters - it - 1, 0) * per_iter

    def eval(self, it: int, train_loss: float, val_loss: float, **scores: float) -> None:
        """Log an evaluation at iteration `it` (with any downstream `scores`, e.g. hellaswag_acc) and redraw loss.png."""
        best = min((r["val_loss"] for r in self.evals.values()), default=float("inf"))
        self._write({"kind": "eval", "iter": it, "train_loss": train_loss, "val_loss": val_loss, **scores,
                     "time": time.time()})
        note = " (best so far)" if val_loss < best else f" (best {best:.4f})"
        extra = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in scores.items())
        print(f"== eval at iter {it}: train loss {train_loss:.4f}, val loss {val_loss:.4f}{note}{extra}", flush=True)
        self.plot()

    # -- outputs ----------------------------------------------------------------------------------------
    def plot(self) -> Optional[Path]:
        """Draw out_dir/loss.png from the history; without matplotlib, say so once and carry on."""
        if not self.can_plot:
            return None
        try:
            from gpt.plot import plot_losses
            evals = sorted(self.evals.items())
            best = min(evals, key=lambda item: item[1]["val_loss"], default=None)
            title = f"{self.out_dir.name}" + (f": best val loss {best[1]['val_loss']:.4f} at iter {best[0]}"
                                              if best else "")
            return plot_losses(self.plot_path, [(i, r["loss"]) for i, r in sorted(self.train_steps.items())],
                               [(i, r["train_loss"]) for i, r in evals], [(i, r["val_loss"]) for i, r in evals], title)
        except ImportError:
            self.can_plot = False
            print("no loss.png: matplotlib is not installed (pip install -r requirements.txt)", flush=True)
            return None

    def finish(self, iters: int, wall_s: float, checkpoint: Optional[Path]) -> dict[str, Any]:
        """At the end of a run: loss.png, summary.json and the summary on the console (and in W&B)."""
        plot = self.plot()
        files = {"metrics": self.path, "summary": self.out_dir / "summary.json"}
        if plot is not None:
            files["loss_plot"] = plot
        summary = run_summary(iters=iters, tokens_per_iter=self.tokens_per_iter, wall_s=wall_s,
                              evals=[r for _, r in sorted(self.evals.items())], session_train=self.session_train,
                              checkpoint=checkpoint, mfu=self.mfu, files=files)
        write_text_atomic(files["summary"], json.dumps(summary, indent=1) + "\n")
        print(format_summary(summary), flush=True)
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        return summary

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
